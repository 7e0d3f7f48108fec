#!/usr/bin/env python3
"""Sends N concurrent GETs for one URL path at once (each on its own connection) and prints
`ok=<2xx answers> failed=<others> seconds=<wall time>`. Usage: stampede.py PORT PATH N"""
import asyncio
import sys
import time

PORT, PATH, N = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


async def one(start):
    await start.wait()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
        writer.write(b"GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % PATH.encode())
        await writer.drain()
        status = (await reader.readline()).split(b" ")[1]
        await reader.read()
        writer.close()
        return status.startswith(b"2")
    except (OSError, IndexError):
        return False


async def main():
    start = asyncio.Event()
    tasks = [asyncio.create_task(one(start)) for _ in range(N)]
    await asyncio.sleep(0.2)
    began = time.monotonic()
    start.set()
    results = await asyncio.gather(*tasks)
    ok = sum(results)
    print(f"ok={ok} failed={N - ok} seconds={time.monotonic() - began:.3f}")


asyncio.run(main())
