# Review probe: bytes at the HTTP->WS upgrade boundary when the multishot receive is armed
# (the upgrade is the 2nd request of a keep-alive connection). /ws-echo (--ws-echo).
import os, socket, struct, sys, time, random

PORT = int(sys.argv[1])

def frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126: hdr = bytes([0x82, 0x80 | n])
    elif n < 65536: hdr = bytes([0x82, 0x80 | 126]) + struct.pack(">H", n)
    else: hdr = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def recv_until(s, buf, marker):
    while marker not in buf:
        d = s.recv(65536)
        if not d: raise EOFError("eof waiting for %r (have %r)" % (marker, buf[:200]))
        buf += d
    i = buf.index(marker) + len(marker)
    return buf[:i], buf[i:]

def read_http_response(s, buf):
    head, buf = recv_until(s, buf, b"\r\n\r\n")
    cl = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"): cl = int(line.split(b":")[1])
    while len(buf) < cl: buf += s.recv(65536)
    return head, buf[cl:]

def read_frames(s, buf, want):
    out = []
    while len(out) < want:
        while len(buf) < 2: buf += s.recv(65536) or (_ for _ in ()).throw(EOFError("eof in frames, got %d" % len(out)))
        op, n = buf[0] & 0x0f, buf[1] & 0x7f
        off = 2
        if n == 126:
            while len(buf) < 4: buf += s.recv(65536)
            n = struct.unpack(">H", buf[2:4])[0]; off = 4
        elif n == 127:
            while len(buf) < 10: buf += s.recv(65536)
            n = struct.unpack(">Q", buf[2:10])[0]; off = 10
        while len(buf) < off + n:
            d = s.recv(65536)
            if not d: raise EOFError("eof in frame body, got %d frames" % len(out))
            buf += d
        if op == 0x8: raise EOFError("close frame %r after %d frames" % (buf[off:off+n], len(out)))
        out.append(buf[off:off + n]); buf = buf[off + n:]
    return out, buf

UPG = (b"GET /ws-echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

def case(name, nreq_before, mode, nframes, size):
    s = socket.create_connection(("127.0.0.1", PORT)); s.settimeout(10)
    buf = b""
    for _ in range(nreq_before):
        s.sendall(GET); h, buf = read_http_response(s, buf); assert b" 200 " in h.split(b"\r\n")[0], h
    payloads = [bytes([(i * 7 + j) & 0xff for j in range(size)]) + struct.pack(">I", i) for i in range(nframes)]
    wire = UPG + b"".join(frame(p) for p in payloads)
    if mode == "one":
        s.sendall(wire)
    elif mode == "pipelined":  # a GET pipelined before the upgrade, all in one write
        s.sendall(GET + wire)
    elif mode == "bytewise":   # the upgrade request and frames dribbled in small pieces
        for i in range(0, len(wire), 7):
            s.sendall(wire[i:i + 7]); time.sleep(0.0005)
    elif mode == "after":      # frames right after the request, in separate sends
        s.sendall(UPG)
        for p in payloads: s.sendall(frame(p))
    if mode == "pipelined":
        h, buf = read_http_response(s, buf); assert b" 200 " in h.split(b"\r\n")[0], h
    h, buf = recv_until(s, buf, b"\r\n\r\n")
    assert b" 101 " in h.split(b"\r\n")[0], h
    got, buf = read_frames(s, buf, nframes)
    ok = got == payloads
    bad = next((i for i, (a, b) in enumerate(zip(got, payloads)) if a != b), None)
    print("%-40s %s%s" % (name, "OK" if ok else "FAIL", "" if ok else " first mismatch at frame %s" % bad), flush=True)
    s.close()
    return ok

ok = True
for before in (0, 1, 3):
    for mode in ("one", "pipelined", "bytewise", "after"):
        for nframes, size in ((20, 100), (300, 1000)):
            if mode == "bytewise" and nframes > 20: continue
            ok &= case("before=%d %s %dx%d" % (before, mode, nframes, size), before, mode, nframes, size)
sys.exit(0 if ok else 1)
