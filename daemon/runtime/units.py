"""systemd unit files for `dropforge run`, and `dropforge service install/uninstall` on Linux.

Rendering is pure (settings → text), so it is tested without systemd; installing writes the
unit and runs ``systemctl`` through an injectable runner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.config import Settings
from daemon.errors import ConfigError, DropforgeError

UNIT_NAME = "dropforge.service"
WATCHDOG_SEC = 60
STOP_GRACE_S = 15  # beyond stop_timeout: interpreter exit, unloading pipelines

# Sandboxing both kinds of unit get. No PrivateDevices= (it hides /dev/nvidia*) and no
# MemoryDenyWriteExecute= (torch and its kernels generate code at run time).
_HARDENING = (
    "PrivateTmp=yes",
    "NoNewPrivileges=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
)
# Only a system service may also use these (a user manager lacks the privileges).
_SYSTEM_HARDENING = (
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictNamespaces=yes",
    "SystemCallArchitectures=native",
)


@dataclass(frozen=True)
class UnitOptions:
    """What a unit file says: the command, the writable folders, the stop budget."""

    user: bool  # a per-user unit (systemctl --user) rather than a system one
    command: tuple[str, ...]  # ExecStart argv
    config_path: str
    writable: tuple[str, ...]  # inboxes, outputs and state_dir
    stop_timeout: float
    run_as: str | None = None  # system units: User=


def dropforge_command() -> tuple[str, ...]:
    """This installation's ``dropforge`` (the venv's script), else ``python -m daemon``."""
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
    for name in ("dropforge", "dropforge.exe"):
        script = bin_dir / name
        if script.is_file():
            return (str(script),)
    return (sys.executable, "-m", "daemon")


def unit_options(
    settings: Settings,
    *,
    user: bool,
    command: Sequence[str] | None = None,
    run_as: str | None = None,
) -> UnitOptions:
    """Unit options for a config: ``run -c`` with its absolute path, its folders writable."""
    folders: list[str] = []
    for path in (*(p for i in settings.inboxes for p in (i.path, i.output)), settings.state_dir):
        text = str(path)
        if text not in folders:
            folders.append(text)
    return UnitOptions(
        user=user,
        command=tuple(command or dropforge_command()),
        config_path=str(settings.config_path),
        writable=tuple(folders),
        stop_timeout=settings.stop_timeout,
        run_as=None if user else run_as,
    )


_PRIVATE_TMP = ("/tmp", "/var/tmp")  # what PrivateTmp=yes replaces with the unit's own


def private_tmp_warnings(folders: Sequence[str]) -> list[str]:
    """Warn about folders under /tmp or /var/tmp: with PrivateTmp=yes the service sees empty
    private copies of those, so files dropped there from outside never reach it."""
    found: list[str] = []
    for folder in folders:
        real = os.path.realpath(folder)
        for tmp in _PRIVATE_TMP:
            if real == tmp or real.startswith(tmp + "/"):
                found.append(
                    f"warning: {folder} is under {tmp}, which the service sees as an empty "
                    f"private {tmp} of its own (PrivateTmp=yes): files put there from outside "
                    f"never reach it; move it out of {tmp} in config.toml"
                )
                break
    return found


def quote(value: str) -> str:
    """One unit-file word: ``%`` specifiers escaped, quoted when it holds blanks or quotes."""
    value = value.replace("%", "%%")
    if value and not any(c.isspace() or c in "\"'\\" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(options: UnitOptions) -> str:
    """The unit file text."""
    argv = [*options.command, "run", "-c", options.config_path]
    # $ would start an environment variable reference in ExecStart=.
    exec_start = " ".join(quote(a).replace("$", "$$") for a in argv)
    kind = "user" if options.user else "system"
    lines = [
        f"# dropforge {kind} service, as `dropforge service install"
        f"{' --user' if options.user else ''}` writes it.",
        "# After changing inbox, output or state_dir paths in the config, install again",
        "# so that ReadWritePaths= follows them.",
        "[Unit]",
        f"Description=dropforge hot folder ({options.config_path.replace('%', '%%')})",
        "Wants=network-online.target",
        "After=network-online.target",
        *(f"RequiresMountsFor={quote(p)}" for p in options.writable),
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start}",
    ]
    if options.run_as:
        lines.append(f"User={options.run_as}")
    lines += [
        # Jobs never download models (`dropforge models fetch` does, by hand).
        "Environment=PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1",
        "Restart=on-failure",
        "RestartSec=10",
        f"WatchdogSec={WATCHDOG_SEC}",
        "TimeoutStartSec=600",
        f"TimeoutStopSec={int(options.stop_timeout + 0.999) + STOP_GRACE_S}",
        "KillMode=mixed",
        # Hardening: everything read-only except the inboxes (after = "move"), outputs, state.
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        *(f"ReadWritePaths={quote(p)}" for p in options.writable),
        *_HARDENING,
    ]
    if not options.user:
        lines += _SYSTEM_HARDENING
    lines += ["", "[Install]", f"WantedBy={'default' if options.user else 'multi-user'}.target"]
    return "\n".join(lines) + "\n"


def unit_path(*, user: bool, environ: Mapping[str, str] | None = None) -> Path:
    """Where the unit file goes: /etc/systemd/system, or the user's systemd/user folder."""
    if not user:
        return Path("/etc/systemd/system") / UNIT_NAME
    env = os.environ if environ is None else environ
    config_home = env.get("XDG_CONFIG_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".config"
    )
    return Path(config_home) / "systemd" / "user" / UNIT_NAME


Runner = Callable[[Sequence[str]], None]


def run_command(argv: Sequence[str]) -> None:
    """Run a systemctl command; its complaint becomes the error message."""
    if shutil.which(argv[0]) is None:
        raise DropforgeError(f"{argv[0]} not found: is this a systemd system?")
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise DropforgeError(f"{' '.join(argv)} failed: {detail}")


def _systemctl(user: bool, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if user else []), *args]


def _require_root(user: bool) -> None:
    if not user and hasattr(os, "geteuid") and os.geteuid() != 0:
        raise ConfigError(
            "installing the system service needs root: run it with sudo, "
            "or pass --user for a service of your own account"
        )


def install(
    options: UnitOptions,
    *,
    dry_run: bool = False,
    runner: Runner = run_command,
    target: Path | None = None,
) -> list[str]:
    """Write the unit, create its folders, reload systemd, enable and start the service.

    Returns one line per thing done (or, with ``dry_run``, that would be done).
    """
    path = target or unit_path(user=options.user)
    text = render_unit(options)
    would = "would " if dry_run else ""
    lines = private_tmp_warnings(options.writable)
    if dry_run:
        lines += [f"would write {path}:", *("    " + line for line in text.splitlines())]
    else:
        _require_root(options.user)
        for folder in options.writable:
            if not os.path.isdir(folder):
                os.makedirs(folder, exist_ok=True)
                if options.run_as:
                    shutil.chown(folder, user=options.run_as)
                lines.append(f"created {folder}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        lines.append(f"wrote {path}")
    for argv in (
        _systemctl(options.user, "daemon-reload"),
        _systemctl(options.user, "enable", "--now", UNIT_NAME),
    ):
        if not dry_run:
            runner(argv)
        lines.append(f"{would}run {' '.join(argv)}")
    scope = "--user " if options.user else ""
    lines.append(
        f"logs: journalctl {scope}-u dropforge -f; state: systemctl {scope}status dropforge"
    )
    if options.user:
        lines.append("to keep it running while you are logged out: loginctl enable-linger $USER")
    elif not options.run_as:
        lines.append("note: the service runs as root; pass --run-as USER for a plain account")
    return lines


def uninstall(
    *,
    user: bool,
    dry_run: bool = False,
    runner: Runner = run_command,
    target: Path | None = None,
) -> list[str]:
    """Stop and disable the service, remove its unit file, reload systemd."""
    path = target or unit_path(user=user)
    would = "would " if dry_run else ""
    lines: list[str] = []
    if not dry_run:
        _require_root(user)
    if path.exists():
        argv = _systemctl(user, "disable", "--now", UNIT_NAME)
        if not dry_run:
            runner(argv)
        lines.append(f"{would}run {' '.join(argv)}")
        if not dry_run:
            path.unlink()
        lines.append(f"{would}remove {path}")
    else:
        lines.append(f"{path} is not installed")
    argv = _systemctl(user, "daemon-reload")
    if not dry_run:
        runner(argv)
    lines.append(f"{would}run {' '.join(argv)}")
    return lines
