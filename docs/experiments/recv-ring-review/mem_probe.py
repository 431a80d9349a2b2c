# Review probe: server RSS with N idle keep-alive connections after one pipelined burst each.
import socket, sys, time, os
PORT, N, BURST, PID = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
def rss():
    for l in open("/proc/%d/status" % PID):
        if l.startswith("VmRSS"): return int(l.split()[1])
socks = []
r0 = rss()
for i in range(N):
    s = socket.create_connection(("127.0.0.1", PORT)); s.settimeout(20)
    s.sendall(GET); one = s.recv(65536)     # first request: arms the multishot after it
    s.sendall(GET * BURST)                  # one pipelined burst
    want, got = len(one) * BURST, 0
    while got < want:
        d = s.recv(1 << 20)
        if not d: raise SystemExit("eof after %d of %d" % (got, want))
        got += len(d)
    socks.append(s)
time.sleep(1)
print("conns=%d burst=%d reqs (%d bytes): RSS grew %d KiB (%.1f KiB/conn)" % (N, BURST, BURST*len(GET), rss()-r0, (rss()-r0)/N))
