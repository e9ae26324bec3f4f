"""A small asyncio POP3 client (RFC 1939, STLS from RFC 2595, UIDL, SASL XOAUTH2) with timeouts.

POP3 has no folders and no flags: relaybox tracks messages by UIDL and deletes (DELE + QUIT) only after the
campaign accepted a message.
"""

from __future__ import annotations

import asyncio
import base64
import ssl

from poller.imap import MailboxError, MailServer


class POP3Session(MailServer):
    def __init__(self, host: str, port: int, **kw):
        super().__init__(host, port, **kw)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @property
    def _out(self) -> asyncio.StreamWriter:
        if self.writer is None:
            raise MailboxError(f"{self.host}: not connected")
        return self.writer

    async def connect(self) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(
                self.host, self.port, ssl=self.ctx if self.tls == "implicit" else None,
                server_hostname=self.server_name if self.tls == "implicit" else None), self.timeout)
            await self._reply("greeting")
            if self.tls == "starttls" and self.ctx is not None:
                await self.command("STLS")
                await asyncio.wait_for(self._out.start_tls(self.ctx, server_hostname=self.server_name),
                                       self.timeout)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise MailboxError(f"cannot connect to {self.host}:{self.port}:"
                               f" {exc or type(exc).__name__}") from exc

    async def _line(self) -> bytes:
        if self.reader is None:
            raise MailboxError(f"{self.host}: not connected")
        line = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not line:
            raise MailboxError(f"{self.host}: connection closed by the server")
        return line.rstrip(b"\r\n")

    async def _reply(self, what: str) -> str:
        line = (await self._line()).decode("utf-8", "replace")
        if not line.startswith("+OK"):
            raise MailboxError(f"{what}: {line}")
        return line

    async def command(self, cmd: str, shown: str | None = None) -> str:
        self._out.write(cmd.encode() + b"\r\n")
        await self._out.drain()
        return await self._reply(shown or cmd.split(" ", 1)[0])

    async def _multiline(self) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = await self._line()
            if line == b".":
                return lines
            lines.append(line[1:] if line.startswith(b"..") else line)

    async def login(self, user: str, password: str) -> None:
        await self.command(f"USER {user}", "USER")
        await self.command(f"PASS {password}", "login failed")

    async def xoauth2(self, user: str, token: str) -> None:
        """AUTH XOAUTH2 with an initial response (RFC 5034). A refusal is a ``+`` challenge holding a JSON
        error, answered with an empty line, then ``-ERR`` with the server's text."""
        blob = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
        self._out.write(f"AUTH XOAUTH2 {blob}\r\n".encode())
        await self._out.drain()
        line = (await self._line()).decode("utf-8", "replace")
        if line.startswith("+ ") or line == "+":
            self._out.write(b"\r\n")
            await self._out.drain()
            line = (await self._line()).decode("utf-8", "replace")
        if not line.startswith("+OK"):
            raise MailboxError(f"XOAUTH2 failed: {line}")

    async def uidl(self) -> dict[str, int]:
        """{uidl: message number}"""
        await self.command("UIDL")
        out = {}
        for line in await self._multiline():
            num, _, uid = line.decode("ascii", "replace").partition(" ")
            out[uid.strip()] = int(num)
        return out

    async def sizes(self) -> dict[int, int]:
        """{message number: octets} (LIST)."""
        await self.command("LIST")
        out = {}
        for line in await self._multiline():
            num, _, size = line.decode("ascii", "replace").partition(" ")
            out[int(num)] = int(size.split()[0])
        return out

    async def retr(self, num: int) -> bytes:
        await self.command(f"RETR {num}")
        return b"\r\n".join(await self._multiline()) + b"\r\n"

    async def dele(self, num: int) -> None:
        await self.command(f"DELE {num}")

    async def quit(self) -> None:
        """QUIT commits the DELEs (UPDATE state); without it the server keeps the messages."""
        if self.writer is None:
            return
        try:
            await self.command("QUIT")
        finally:
            self.writer.close()

    async def logout(self) -> None:
        try:
            await self.quit()
        except Exception:  # noqa: BLE001 - best effort
            pass
