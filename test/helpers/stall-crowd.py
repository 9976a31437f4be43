#!/usr/bin/env python3
# A crowd of stalled readers: N connections to 127.0.0.1:PORT with 4 KiB receive buffers, each
# sends "B" and reads nothing; prints "stalled" after PAUSE seconds and waits for a line on stdin,
# then reads every stream to its end (with a big receive buffer) and prints
# "complete <streams of 4000000 bytes>".
# usage: stall-crowd.py PORT N PAUSE_SECONDS
import socket, sys, time
port, n, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"B")
    socks.append(s)
time.sleep(pause)
print("stalled", flush=True)
sys.stdin.readline()
complete = 0
for s in socks:
    got = 0
    # The stall is over: a big receive buffer lets the window grow (to the 64 KiB its 4 KiB
    # handshake allows), so reading is not what the test waits for.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.settimeout(20)
    try:
        while True:
            d = s.recv(1 << 20)
            if not d:
                break
            got += len(d)
    except OSError:
        pass
    complete += got == 4000000
print("complete %d" % complete, flush=True)
