"""The other replicas: what they accepted, read once at start, and confirmations passed on.

istiod fails over between replicas (a rolling upgrade, a node drain, an OOM kill), so a
replica that starts must not serve less than the ones already running: one that started
during a hold, a recovery grace or a refill would otherwise withdraw what they keep. Before
its first snapshot a replica asks each peer's admin port for what it remembers of each
registry (GET /debug/accepted: codec.py's document) and takes it as its own (Memory.adopt):
the peer's accepted views are its reference, the peer's hold goes on from the same start,
its grace lasts as long. A peer never adds anything: its views are only what the own
listing is judged against.

Bounded: every peer is asked at once and nothing waits longer than `peers.wait`; a peer
that does not answer (or answers nonsense) is skipped with one log line; a replica that
has not served a first snapshot is no one's reference. This replica is told apart by its
replica id (it may resolve among its own peers' addresses).

An operator's confirmation reaches one replica through the Service; that replica passes it
on to every peer with the admin token, marked as passed on (`FORWARDED`), so a peer does
not pass it on again and a replica that receives its own confirmation ignores it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp

from mcpserver.codec import CodecError, Document, Record, decode_document

log = logging.getLogger("mcpserver.peers")

ACCEPTED_PATH: Final = "/debug/accepted"
FORWARDED: Final = "X-Mcpserver-Forwarded-By"
"""Header on a confirmation one replica passes on: the sender's replica id."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One peer's document, and how to name it for people ("peer 10.0.0.5:15052")."""

    label: str
    document: Document


def pick(answers: Sequence[Answer]) -> dict[str, tuple[str, Record]]:
    """For each registry, the record to take over, and its peer's label: the peer that
    holds it (the earliest hold, so every replica applies it when the first would), else
    one in a recovery grace (the one lasting longest), else the most recent document. When
    peers disagree, the one keeping most wins: a replica never serves less than a peer."""
    chosen: dict[str, tuple[tuple[int, float], str, Record]] = {}
    for answer in answers:
        for name, record in answer.document.records.items():
            if record.hold is not None:
                rank = (2, -record.hold.since)
            elif record.grace is not None:
                rank = (1, record.grace.until)
            else:
                rank = (0, answer.document.written)
            best = chosen.get(name)
            if best is None or rank > best[0]:
                chosen[name] = (rank, answer.label, record)
    return {name: (label, record) for name, (_, label, record) in chosen.items()}


class Peers:
    """The configured peers of one replica."""

    def __init__(
        self, addresses: Sequence[str], wait: float, replica: str, token: str | None = None
    ) -> None:
        self._addresses = list(addresses)
        self._wait = wait
        self._replica = replica
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def resolve(self) -> list[str]:
        """Every HOST:PORT the addresses name (a name resolving to several addresses is
        several peers), in a stable order; a name that does not resolve is logged."""
        loop = asyncio.get_running_loop()
        found: dict[str, None] = {}
        for address in self._addresses:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as err:
                log.warning("peers: cannot resolve %s (%s); skipped", address, err)
                continue
            for family, *_, sockaddr in infos:
                ip = str(sockaddr[0])
                found[f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"] = None
        return sorted(found)

    async def accepted(self) -> list[Answer]:
        """What each reachable, primed peer remembers; within `wait` in all."""
        try:
            async with asyncio.timeout(self._wait):
                targets = await self.resolve()
        except TimeoutError:
            log.warning("peers: resolving %s took longer than peers.wait", self._addresses)
            return []
        timeout = aiohttp.ClientTimeout(total=self._wait)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            answers = await asyncio.gather(*(self._ask(http, target) for target in targets))
        return [a for a in answers if a is not None]

    async def _ask(self, http: aiohttp.ClientSession, target: str) -> Answer | None:
        label = f"peer {target}"
        try:
            async with http.get(f"http://{target}{ACCEPTED_PATH}", headers=self._headers) as reply:
                body = await reply.read()
                if reply.status != 200:
                    raise PeerError(f"answered HTTP {reply.status}: {body[:200]!r}")
            document = await asyncio.to_thread(_decode, body)
        except (OSError, aiohttp.ClientError, TimeoutError, PeerError, CodecError) as err:
            log.warning("%s skipped: %s", label, _reason(err))
            return None
        if document.replica == self._replica:
            return None  # ourselves, among our own peers' addresses
        if not document.primed:
            log.info("%s skipped: it has not served a first snapshot either", label)
            return None
        return Answer(label, document)

    async def forward_confirm(self, registry: str) -> dict[str, str]:
        """Pass an operator's confirmation on to every peer: {peer: outcome}."""
        try:
            async with asyncio.timeout(self._wait):
                targets = await self.resolve()
        except TimeoutError:
            return {", ".join(self._addresses): "not resolved within peers.wait"}
        headers = {**self._headers, FORWARDED: self._replica}
        timeout = aiohttp.ClientTimeout(total=self._wait)
        path = f"/debug/registries/{registry}/confirm"

        async def one(http: aiohttp.ClientSession, target: str) -> tuple[str, str]:
            try:
                async with http.post(f"http://{target}{path}", headers=headers) as reply:
                    body = await reply.read()
                    answer = json.loads(body) if body else {}
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as err:
                log.warning("peer %s: confirmation not passed on: %s", target, _reason(err))
                return target, f"unreachable: {_reason(err)}"
            if isinstance(answer, dict) and answer.get("self"):
                return target, "self"
            if reply.status == 200:
                return target, "confirmed"
            if reply.status == 404:
                return target, "no held removal"
            return target, f"HTTP {reply.status}"

        async with aiohttp.ClientSession(timeout=timeout) as http:
            outcomes = await asyncio.gather(*(one(http, target) for target in targets))
        return {target: outcome for target, outcome in outcomes if outcome != "self"}


class PeerError(Exception):
    """A peer's answer that is not a document."""


def _decode(body: bytes) -> Document:
    try:
        data = json.loads(body)
    except ValueError as err:
        raise CodecError(f"not JSON: {err}") from None
    return decode_document(data)


def _reason(err: BaseException) -> str:
    return str(err) or type(err).__name__


def describe(picked: Mapping[str, tuple[str, Record]], ours: Iterable[str]) -> list[str]:
    """One line per registry taken over, for the log."""
    lines = []
    for name in ours:
        if name not in picked:
            continue
        label, record = picked[name]
        accepted = record.checkpoints[-1].services
        what = f"{len(accepted)} services"
        if record.hold is not None:
            what += f", held since {record.hold.since:.0f} ({record.hold.cause})"
        if record.grace is not None:
            what += f", in a recovery grace ({record.grace.why})"
        lines.append(f"registry={name} from {label}: {what}")
    return lines
