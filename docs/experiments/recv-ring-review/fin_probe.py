import socket, sys, time
PORT = int(sys.argv[1])
GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
CLOSE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
def eof_within(s, t):
    s.settimeout(t); end = time.time() + t
    try:
        while time.time() < end:
            if not s.recv(65536): return True
    except socket.timeout: return False
    except ConnectionResetError: return "RST"
    return False
# 1: idle timeout with the multishot armed (2nd request answered)
s = socket.create_connection(("127.0.0.1", PORT)); s.sendall(GET); s.recv(65536); s.sendall(GET); s.recv(65536)
print("idle timeout -> FIN:", eof_within(s, 5))
# 2: Connection: close as 2nd request
s = socket.create_connection(("127.0.0.1", PORT)); s.sendall(GET); s.recv(65536); s.sendall(CLOSE)
print("close request -> FIN:", eof_within(s, 5))
# 3: Connection: close with pipelined junk after it (linger path), 3rd request
s = socket.create_connection(("127.0.0.1", PORT)); s.sendall(GET); s.recv(65536); s.sendall(GET); s.recv(65536)
s.sendall(CLOSE + GET * 50)
print("close + pipelined -> FIN:", eof_within(s, 5))
# 4: malformed request (400 + linger) on 2nd request
s = socket.create_connection(("127.0.0.1", PORT)); s.sendall(GET); s.recv(65536); s.sendall(b"BOGUS\r\n\r\n" + b"x" * 10000)
print("400 + linger -> FIN:", eof_within(s, 5))
