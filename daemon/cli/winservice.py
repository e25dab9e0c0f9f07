"""Windows service entry point on pywin32 (the optional extra ``windows``).

``dropforge service install -c C:\\dropforge\\config.toml`` (as administrator) registers the
service with the config's absolute path; the Service Control Manager then runs
``DropforgeWindowsService``, whose stop request takes the same graceful path as SIGTERM on
Linux (``Service.request_stop``). pywin32 is imported only here and only when needed, so this
module imports (and type-checks) anywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import ntpath
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from daemon.config import Settings
from daemon.errors import ConfigError

SERVICE_NAME = "dropforge"
DISPLAY_NAME = "dropforge hot folder"
DESCRIPTION = "Watches inbox folders and generates images, meshes and tweens from dropped files."
CONFIG_OPTION = "config"
DRIVE_REMOTE = 4  # GetDriveTypeW: a network (mapped) drive
_STOP_HINT_MS = 5000  # beyond stop_timeout, for the interpreter to exit


def pywin32() -> dict[str, ModuleType]:
    """The pywin32 modules the service needs; ConfigError saying how to install them."""
    names = ("win32serviceutil", "win32service", "servicemanager")
    try:
        return {name: importlib.import_module(name) for name in names}
    except ImportError:
        raise ConfigError(
            'the Windows service needs pywin32: pip install "dropforge[windows]", then run '
            "python Scripts\\pywin32_postinstall.py -install as administrator"
        ) from None


def mapped_drive_warnings(
    paths: Iterable[str | Path], drive_type: Callable[[str], int]
) -> list[str]:
    """Warn about paths on mapped network drives, which a service's session does not have."""
    warnings: list[str] = []
    for path in paths:
        drive, _ = ntpath.splitdrive(str(path))
        if len(drive) == 2 and drive[1] == ":" and drive_type(drive + "\\") == DRIVE_REMOTE:
            warnings.append(
                f"{path}: {drive} is a mapped network drive, which services do not see; "
                "use its UNC path (\\\\server\\share\\...) in config.toml instead"
            )
    return warnings


def _drive_type(root: str) -> int:
    import ctypes

    kernel32 = getattr(ctypes, "windll").kernel32  # noqa: B009 - windll exists on Windows only
    return int(kernel32.GetDriveTypeW(root))


def install(settings: Settings, *, dry_run: bool = False) -> list[str]:
    """Register the service (automatic start) for this config and start it."""
    folders = [p for i in settings.inboxes for p in (i.path, i.output)] + [settings.state_dir]
    lines = mapped_drive_warnings(folders, _drive_type) if os.name == "nt" else []
    would = "would " if dry_run else ""
    if not dry_run:
        win = pywin32()
        util, svc = win["win32serviceutil"], win["win32service"]
        util.InstallService(
            util.GetServiceClassString(service_class()),
            SERVICE_NAME,
            DISPLAY_NAME,
            startType=svc.SERVICE_AUTO_START,
            description=DESCRIPTION,
        )
        util.SetServiceCustomOption(SERVICE_NAME, CONFIG_OPTION, str(settings.config_path))
        util.StartService(SERVICE_NAME)
    lines.append(f"{would}install the Windows service {SERVICE_NAME} (automatic start)")
    lines.append(f"{would}store its config path {settings.config_path}")
    lines.append(f"{would}start it; logs: {settings.state_dir / 'logs' / 'dropforge.log'}")
    return lines


def uninstall(*, dry_run: bool = False) -> list[str]:
    """Stop and remove the service."""
    if not dry_run:
        util = pywin32()["win32serviceutil"]
        with contextlib.suppress(Exception):  # pywintypes.error: it was not running
            util.StopService(SERVICE_NAME)
        util.RemoveService(SERVICE_NAME)
    return [f"{'would ' if dry_run else ''}stop and remove the Windows service {SERVICE_NAME}"]


def service_class() -> type:
    """Build the pywin32 ServiceFramework subclass (needs pywin32)."""
    win = pywin32()
    util, svc, manager = win["win32serviceutil"], win["win32service"], win["servicemanager"]

    class DropforgeWindowsService(util.ServiceFramework):  # type: ignore[misc,name-defined]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self._service: Any = None
            self._stop_hint = 30_000 + _STOP_HINT_MS

        def SvcStop(self) -> None:  # pywin32's method names
            self.ReportServiceStatus(svc.SERVICE_STOP_PENDING, waitHint=self._stop_hint)
            if self._service is not None:
                self._service.request_stop("service stop")

        def SvcDoRun(self) -> None:  # pywin32's method names
            from daemon.app import generator_factory, load_settings
            from daemon.runtime.logs import configure_logging
            from daemon.runtime.service import Service

            config = util.GetServiceCustomOption(self._svc_name_, CONFIG_OPTION)
            settings = load_settings(Path(config) if config else None)
            self._stop_hint = int(settings.stop_timeout * 1000) + _STOP_HINT_MS
            # A service has no console: log to the file only.
            configure_logging(
                "json",
                stream=open(os.devnull, "w", encoding="utf-8"),  # noqa: SIM115 - lives as long as the process
                logfile=settings.state_dir / "logs" / "dropforge.log",
            )
            manager.LogInfoMsg(f"{SERVICE_NAME}: starting with {config}")
            self._service = Service(settings, generator_factory(settings))
            self._service.run(handle_signals=False)
            manager.LogInfoMsg(f"{SERVICE_NAME}: stopped")

    return DropforgeWindowsService


def __getattr__(name: str) -> Any:
    # pythonservice.exe looks the class up by name when the service starts.
    if name == "DropforgeWindowsService":
        cls = service_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)
