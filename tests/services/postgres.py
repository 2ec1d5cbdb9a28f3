"""Throw-away PostgreSQL cluster for tests."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from . import INSTALL_HINT, ManagedProcess, register_cleanup, unregister_cleanup, wait_until
from .ports import free_port

# initdb/postgres refuse to run as root; the Debian package creates this account.
PG_SYSTEM_USER = "postgres"


def find_pg_bindir() -> Path:
    """Directory with initdb and postgres: newest Debian /usr/lib/postgresql/<ver>/bin first.

    Other copies on PATH (e.g. unrelated wrappers in /usr/local/bin) are only a fallback.
    """

    def version(initdb: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", initdb.parent.parent.name))

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if debian:
        return debian[-1].parent
    initdb = shutil.which("initdb")
    if initdb and os.access(Path(initdb).parent / "postgres", os.X_OK):
        return Path(initdb).parent
    raise RuntimeError(f"PostgreSQL server binaries (initdb, postgres) not found; {INSTALL_HINT}")


class PostgresServer:
    """A PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, durability off for speed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.bindir = find_pg_bindir()
        self.port = free_port()
        self.log_path = self.workdir / "postgres.log"
        self._user: str | None = None
        self._tmp_base: Path | None = None
        if os.geteuid() == 0:
            # Root: run the server as `postgres`, which cannot enter pytest's root-only (0700)
            # temp tree, so the cluster lives in its own directory owned by that user.
            self._user = PG_SYSTEM_USER
            try:
                account = pwd.getpwnam(PG_SYSTEM_USER)
            except KeyError:
                raise RuntimeError(f"no `{PG_SYSTEM_USER}` system user; {INSTALL_HINT}") from None
            self._tmp_base = Path(tempfile.mkdtemp(prefix="driftline-pg-"))
            os.chown(self._tmp_base, account.pw_uid, account.pw_gid)
            base = self._tmp_base
        else:
            base = self.workdir
        self.data_dir = base / "data"
        self.socket_dir = base / "sockets"
        self._proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive

    def _initdb(self) -> None:
        # --no-sync and C locale: fastest, and no dependency on the machine's locales.
        argv = [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        argv += ["--auth=trust", "--no-locale", "--encoding=UTF8", "--no-sync"]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.data_dir.parent,
            user=self._user,
            group=self._user,
            extra_groups=[] if self._user else None,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )

    def start(self, timeout: float = 60.0) -> None:
        """initdb on first start, then run the server and wait until it accepts queries."""
        if self.running:
            return
        register_cleanup(self, self.close)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self.socket_dir.mkdir(exist_ok=True)
        if self._user:
            account = pwd.getpwnam(self._user)
            os.chown(self.socket_dir, account.pw_uid, account.pw_gid)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
        }
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._proc = ManagedProcess(argv, self.log_path, user=self._user, cwd=self.data_dir.parent)
        self._proc.start()
        wait_until(self._accepts, timeout=timeout, what="PostgreSQL", proc=self._proc)

    def _accepts(self) -> bool:
        try:
            with self.connect(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def connect(self, dbname: str = "postgres", connect_timeout: int = 10) -> psycopg.Connection:
        """An autocommit psycopg connection as the superuser (close it, or use `with`)."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=dbname,
            connect_timeout=connect_timeout,
            autocommit=True,
        )

    def create_database(self, name: str) -> str:
        """Create database `name` and return its SQLAlchemy URL."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        # FORCE: connections a test forgot to close must not block the drop.
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, disconnect clients); data kept."""
        if self._proc is not None:
            self._proc.stop(signal.SIGINT, timeout=timeout)
            self._proc = None

    def close(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        if self._tmp_base is not None:
            shutil.rmtree(self._tmp_base, ignore_errors=True)
            self._tmp_base = None
        unregister_cleanup(self)
