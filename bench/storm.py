"""Miss storm: N concurrent requests (one connection each) with the same never-seen key."""
import asyncio
import sys

port, key, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])


async def one() -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/resource HTTP/1.1\r\nHost: x\r\napikey: {key}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    await reader.read()
    writer.close()
    return status


async def main() -> None:
    statuses = await asyncio.gather(*(one() for _ in range(n)))
    print(f"{n} requests, {sum(s == 200 for s in statuses)} answered 200")


asyncio.run(main())
