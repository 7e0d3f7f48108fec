#!/usr/bin/env python3
"""The cache benchmarks' scripted origin: answers every GET with 200, a small JSON body and
`Cache-Control: <CC>` after DELAY_MS, and counts the requests it received; `GET /__count`
returns the count (not counted itself). Usage: origin.py PORT CC DELAY_MS"""
import asyncio
import sys

PORT, CC, DELAY = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) / 1000.0
count = 0


async def serve(reader, writer):
    global count
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            if target == b"/__count":
                body = str(count).encode()
                extra = b""
            else:
                count += 1
                if DELAY:
                    await asyncio.sleep(DELAY)
                body = b'{"service":"cache-origin","n":%d}' % count
                extra = b"Cache-Control: " + CC.encode() + b"\r\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + extra
                + b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=4096)
    async with server:
        await server.serve_forever()


asyncio.run(main())
