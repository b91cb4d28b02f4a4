"""Where the config comes from, and how a running process follows its changes.

Sources: a JSON file (``--config PATH`` or ``P13N_CONFIG``), the AWS AppConfig agent
(``appconfig://APPLICATION/ENVIRONMENT/PROFILE``, read from the agent's local HTTP endpoint,
``http://localhost:2772`` unless ``P13N_APPCONFIG_AGENT`` says otherwise), or the built-in
embedded default when nothing is given.

``ConfigHolder`` polls its source (every second by default, so a file change is live within
two seconds). A new document that fails validation is logged with every reason and the running
config is kept; listeners are told only of valid changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Protocol

import httpx

from schemas.config import Config, default_document, parse_config_text
from schemas.errors import ConfigError

log = logging.getLogger("p13n.config")

APPCONFIG_SCHEME = "appconfig://"
DEFAULT_AGENT = "http://localhost:2772"


class ConfigSource(Protocol):
    """Something that yields the config document's bytes and names itself in messages."""

    name: str

    def read(self) -> bytes: ...


class FileSource:
    def __init__(self, path: str) -> None:
        self.path = path
        self.name = path

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read config {self.path}: {exc.strerror}") from exc


class AppConfigAgentSource:
    """Reads the latest deployed configuration from the AppConfig agent (or Lambda extension)."""

    def __init__(self, application: str, environment: str, profile: str, base_url: str) -> None:
        quote = urllib.parse.quote
        self.url = (
            f"{base_url.rstrip('/')}/applications/{quote(application, safe='')}"
            f"/environments/{quote(environment, safe='')}/configurations/{quote(profile, safe='')}"
        )
        self.name = f"{APPCONFIG_SCHEME}{application}/{environment}/{profile}"

    def read(self) -> bytes:
        try:
            response = httpx.get(self.url, timeout=5)
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot read {self.name} from the AppConfig agent: {exc}") from exc
        if response.status_code != 200:
            raise ConfigError(
                f"cannot read {self.name} from the AppConfig agent: HTTP {response.status_code} "
                f"{response.text[:200]}"
            )
        return response.content


class BuiltinSource:
    name = "builtin"

    def read(self) -> bytes:
        return json.dumps(default_document()).encode()


def source_for(spec: str | None, environ: Mapping[str, str] = os.environ) -> ConfigSource:
    """``--config`` value (or ``P13N_CONFIG``) → source; nothing → the built-in default."""
    spec = spec or environ.get("P13N_CONFIG") or None
    if spec is None:
        return BuiltinSource()
    if spec.startswith(APPCONFIG_SCHEME):
        parts = spec[len(APPCONFIG_SCHEME) :].split("/")
        if len(parts) != 3 or not all(parts):
            raise ConfigError(f"expected appconfig://APPLICATION/ENVIRONMENT/PROFILE, got {spec}")
        base = environ.get("P13N_APPCONFIG_AGENT", DEFAULT_AGENT)
        return AppConfigAgentSource(parts[0], parts[1], parts[2], base)
    return FileSource(spec)


def load_from(source: ConfigSource) -> Config:
    return parse_config_text(source.read(), source=source.name)


class ConfigHolder:
    """The current config of a process, swapped atomically when its source changes."""

    def __init__(
        self,
        source: ConfigSource,
        *,
        adjust: Callable[[Config], Config] = lambda config: config,
        poll_seconds: float = 1.0,
    ) -> None:
        self._source = source
        self._adjust = adjust
        self._poll = poll_seconds
        raw = source.read()
        self._digest = hashlib.sha256(raw).digest()
        self._current = adjust(parse_config_text(raw, source=source.name))
        self._listeners: list[Callable[[Config, Config], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Config:
        return self._current

    def __call__(self) -> Config:
        return self._current

    def subscribe(self, listener: Callable[[Config, Config], None]) -> None:
        """``listener(old, new)`` runs on the watcher thread after each valid change."""
        self._listeners.append(listener)

    def start(self) -> None:
        if isinstance(self._source, BuiltinSource) or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="p13n-config", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def poll_once(self) -> bool:
        """Read the source; apply a valid change. True when the config changed."""
        try:
            raw = self._source.read()
        except ConfigError as exc:
            log.warning("config source unreadable, keeping the running config: %s", exc.message)
            return False
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            new = self._adjust(parse_config_text(raw, source=self._source.name))
        except ConfigError as exc:
            log.error(
                "config reload rejected, keeping version %s: %s",
                self._current.version,
                exc.message,
                extra={"errors": [f"{path}: {reason}" for path, reason in exc.errors]},
            )
            return False
        old, self._current = self._current, new
        log.info("config reloaded: %s", new.summary())
        for listener in self._listeners:
            listener(old, new)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            self.poll_once()
