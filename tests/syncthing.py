"""Real Syncthing instances for tests: each in its own home, GUI/API and sync protocol on
127.0.0.1 only, with global and local discovery, relays, NAT traversal, usage reporting,
crash reporting and upgrades off; configured and paired through the REST API.

Needs the ``syncthing`` binary (Debian: ``apt-get install syncthing``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

SYNCTHING = shutil.which("syncthing")
MISSING = "syncthing is not installed (Debian: apt-get install syncthing; .ci/run installs it)"

# Off from the first start, before anything could reach beyond this machine.
_OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "urAccepted": "-1",
    "urSeen": "3",
    "startBrowser": "false",
    "crashReportingEnabled": "false",
    "autoUpgradeIntervalH": "0",
    "limitBandwidthInLan": "true",  # 127.0.0.1 is "LAN": rate limits apply only with this
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` every 0.1 s; raise AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class Syncthing:
    """One Syncthing instance: ``generate`` writes its home, ``start`` runs it."""

    def __init__(self, home: Path) -> None:
        assert SYNCTHING is not None, MISSING
        self.home = home
        self.gui = f"127.0.0.1:{free_port()}"
        self.listen = f"tcp://127.0.0.1:{free_port()}"
        out = subprocess.run(
            [SYNCTHING, "generate", f"--home={home}", "--no-default-folder"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        self.device_id = next(
            line.split("Device ID:", 1)[1].strip()
            for line in (out.stdout + out.stderr).splitlines()
            if "Device ID:" in line
        )
        config = home / "config.xml"
        tree = ET.parse(config)
        root = tree.getroot()
        gui = root.find("gui")
        assert gui is not None
        _set(gui, "address", self.gui)
        self.api_key = gui.findtext("apikey") or ""
        options = root.find("options")
        assert options is not None
        for element in options.findall("listenAddress"):
            options.remove(element)
        ET.SubElement(options, "listenAddress").text = self.listen
        for key, value in _OPTIONS.items():
            _set(options, key, value)
        tree.write(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "syncthing.log"

    def start(self) -> None:
        """Run ``syncthing serve`` and wait until its API answers."""
        env = {**os.environ, "STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1", "STNORESTART": "1"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SYNCTHING, "serve", f"--home={self.home}", "--no-browser", "--no-restart"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_for(self._answers, 60, f"syncthing at {self.gui}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"syncthing exited: {self.log.read_text(errors='replace')}")
        try:
            return bool(self.api("GET", "/rest/system/ping"))
        except (OSError, urllib.error.URLError):
            return False

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the REST API; return the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.gui}{path}",
            data=data,
            method=method,
            headers={"X-API-Key": self.api_key, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read()
        return json.loads(text) if text.strip() else None

    def pair(self, other: Syncthing) -> None:
        """Know ``other`` as a device at its 127.0.0.1 address."""
        self.api(
            "PUT",
            f"/rest/config/devices/{other.device_id}",
            {
                "deviceID": other.device_id,
                "name": other.home.name,
                "addresses": [other.listen],
                "autoAcceptFolders": False,
            },
        )

    def share(self, folder: str, path: Path, kind: str, other: Syncthing, **extra: Any) -> None:
        """Share ``path`` as folder ``folder`` of type ``kind`` with ``other``."""
        body = {
            "id": folder,
            "label": folder,
            "path": str(path),
            "type": kind,
            "devices": [{"deviceID": self.device_id}, {"deviceID": other.device_id}],
            **extra,
        }
        self.api("PUT", f"/rest/config/folders/{folder}", body)

    def connected(self, other: Syncthing) -> bool:
        """Whether the connection to ``other`` is up."""
        connections = self.api("GET", "/rest/system/connections")["connections"]
        return bool(connections.get(other.device_id, {}).get("connected"))

    def scan(self, folder: str) -> None:
        """Rescan ``folder`` now (instead of waiting for the file-system watcher)."""
        self.api("POST", f"/rest/db/scan?folder={folder}")

    def in_sync(self, folder: str, other: Syncthing) -> bool:
        """Whether ``other`` has everything of ``folder`` this instance has."""
        status = self.api("GET", f"/rest/db/completion?folder={folder}&device={other.device_id}")
        return bool(status["completion"] == 100 and status["needItems"] == 0)

    def stop(self) -> None:
        """Shut the instance down (killing it if it does not stop within 20 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.api("POST", "/rest/system/shutdown")
            self.proc.wait(timeout=20)
        except (OSError, urllib.error.URLError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=20)


def _set(parent: ET.Element, tag: str, value: str) -> None:
    element = parent.find(tag)
    if element is None:
        element = ET.SubElement(parent, tag)
    element.text = value
