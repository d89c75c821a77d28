"""A TCP forwarder for machines without socat (see tests/netns.py):

    python tests/tcp_forward.py LISTEN_ADDRESS LISTEN_PORT TARGET_ADDRESS TARGET_PORT

Relays every accepted connection to the target until either side closes it.
"""

from __future__ import annotations

import asyncio
import socket
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def main(listen: str, port: int, target: str, target_port: int) -> None:
    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target, target_port)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, listen, port, reuse_address=True, backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    address, listen_port, target_address, target_port = sys.argv[1:5]
    asyncio.run(main(address, int(listen_port), target_address, int(target_port)))
