"""compose.yaml: its structure, and its commands run as plain processes.

No Docker engine runs here, so the file is checked the way Docker would use
it: the services and their dependencies, every ``streamq`` command against
the real CLI (subcommands, options, the App they load), Valkey's flags
against a real valkey-server and ``streamq doctor``'s checks, and finally the
worker, janitor, producer and healthcheck commands run together against the
test server, as the containers would run them.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import signal
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from streamq import App
from streamq.cli import cli
from streamq.doctor import (
    Status,
    check_appendfsync,
    check_appendonly,
    check_maxmemory_policy,
    run_checks,
)
from streamq.embedded import ValkeyServer
from tests.apps.process import ROOT, Child, python_child
from tests.conftest import queue_name, subprocess_env, wait_until

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PYTHON_SERVICES = ("worker", "janitor", "producer")
STREAMQ_COMMANDS = ("worker", "janitor")
COMMANDS = typer.main.get_command(cli).commands  # type: ignore[attr-defined]


def shell_steps(service: str) -> list[list[str]]:
    """The ``sh -c`` script of a service, split into its ``&&`` steps."""
    command = SERVICES[service]["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3, command
    return [shlex.split(step) for step in command[2].split("&&")]


def main_process(service: str) -> list[str]:
    """The service's long-running command, after ``exec`` (so it is PID 1 and gets SIGTERM)."""
    last = shell_steps(service)[-1]
    assert last[0] == "exec", f"{service}: the last step must exec, or signals stop at sh"
    return last[1:]


def streamq_params(service: str) -> dict[str, Any]:
    """Parse the service's ``streamq <subcommand> ...`` with the real CLI; its params."""
    argv = main_process(service)
    assert argv[0] == "streamq", argv
    subcommand, *args = argv[1:]
    command = COMMANDS[subcommand]
    params: dict[str, Any] = command.make_context(f"streamq {subcommand}", list(args)).params
    return params


def flags(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a server command line."""
    return {argv[i][2:]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration)
    assert match, f"unexpected duration {duration!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]


def test_services_share_one_install_and_one_server() -> None:
    """Each Python service installs streamq from the mounted checkout and reaches valkey."""
    assert {"valkey", *PYTHON_SERVICES} <= set(SERVICES)
    for name in PYTHON_SERVICES:
        service = SERVICES[name]
        assert service["image"] == "python:3.12-slim"
        assert service["working_dir"] == "/src"
        assert ".:/src" in service["volumes"]
        assert service["environment"]["STREAMQ_REDIS_URL"] == "redis://valkey:6379/0"
        install = shell_steps(name)[0]
        assert install[:2] == ["pip", "install"]
        target = install[-1]
        assert target.startswith("/src"), install
        if "--metrics-port" in main_process(name):
            assert target == "/src[metrics]", "metrics need the extra (prometheus-client)"


def test_valkey_flags_are_what_doctor_demands() -> None:
    """AOF on with a real fsync policy and noeviction: each passes doctor's own check."""
    valkey = SERVICES["valkey"]
    assert valkey["image"] in ("valkey/valkey:8.1", "redis:7.4")
    argv = valkey["command"]
    assert argv[0] in ("valkey-server", "redis-server")
    config = flags(argv)
    assert config["appendonly"] == "yes"
    assert config["maxmemory-policy"] == "noeviction"
    for check in (
        check_appendonly(config["appendonly"]),
        check_appendfsync(config.get("appendfsync", "everysec")),
        check_maxmemory_policy(config["maxmemory-policy"]),
    ):
        assert check.status is Status.OK, check
    assert any(volume.endswith(":/data") for volume in valkey["volumes"]), "the AOF needs a volume"


@pytest.mark.anyio
async def test_valkey_command_passes_doctor_on_a_real_server(tmp_path: Path) -> None:
    """The same flags on a real valkey-server: it accepts them, and doctor finds no problem.

    The flags go last, so they override the test server's defaults: a wrong value
    in compose.yaml would show up here (and an unknown flag stops the server).
    """
    flags_of_compose = SERVICES["valkey"]["command"][1:]
    server = ValkeyServer(tmp_path, unix_socket=tmp_path / "v.sock", extra_args=flags_of_compose)
    server.start()
    try:
        async with App(queue_name(), redis_url=server.url) as app:
            checks = await run_checks(app)
    finally:
        server.stop()
    problems = [check for check in checks if check.status is Status.PROBLEM]
    assert not problems, problems
    assert {c.name for c in checks} >= {"appendonly", "appendfsync", "maxmemory-policy"}


@pytest.mark.parametrize("service", STREAMQ_COMMANDS)
def test_streamq_commands_exist_with_their_options(service: str) -> None:
    """Every ``streamq`` command names a real subcommand, real options, and a real App."""
    argv = main_process(service)
    subcommand = argv[1]
    assert subcommand in COMMANDS, f"no `streamq {subcommand}`; there are {sorted(COMMANDS)}"
    declared = {
        opt for param in COMMANDS[subcommand].params for opt in (*param.opts, *param.secondary_opts)
    }
    used = {arg.split("=")[0] for arg in argv[2:] if arg.startswith("-")}
    assert used <= declared, f"`streamq {subcommand}` has no {sorted(used - declared)}"
    params = streamq_params(service)  # values parse (types, ranges) as the CLI parses them
    module_name, _, attribute = params["app_path"].partition(":")
    loaded = getattr(importlib.import_module(module_name), attribute or "app")
    assert isinstance(loaded, App), f"{params['app_path']} is not a streamq App"


def test_worker_gets_its_grace_period_before_docker_kills_it() -> None:
    """Docker sends SIGKILL after stop_grace_period: it must exceed the worker's --grace."""
    params = streamq_params("worker")
    assert params["janitor"] is False, "the janitor service does the janitor's duties"
    assert seconds(SERVICES["worker"]["stop_grace_period"]) > params["grace"]


def test_healthchecks_and_dependencies() -> None:
    """Every long-running service has a healthcheck; each waits for the ones it needs."""
    for name in ("valkey", "worker", "janitor"):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (name, test)
    assert "ping" in " ".join(SERVICES["valkey"]["healthcheck"]["test"])
    for name in PYTHON_SERVICES:
        depends = SERVICES[name]["depends_on"]
        assert depends["valkey"]["condition"] == "service_healthy", name
    for name in ("worker", "janitor"):
        assert SERVICES["producer"]["depends_on"][name]["condition"] == "service_healthy"
    # The worker's healthcheck reads the metrics port the worker serves.
    port = streamq_params("worker")["metrics_port"]
    assert f"127.0.0.1:{port}/metrics" in SERVICES["worker"]["healthcheck"]["test"][-1]
    producer = main_process("producer")
    assert producer[0] == "python" and (ROOT / producer[1]).is_file(), producer


def test_published_ports_are_loopback_only() -> None:
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to every interface"


def python_argv(argv: list[str]) -> list[str]:
    """A container command as arguments to this interpreter (``python -m streamq`` for streamq)."""
    if argv[0] == "streamq":
        return ["-m", "streamq", *argv[1:]]
    assert argv[0] == "python", argv
    return argv[1:]


async def healthcheck(
    service: str, env: dict[str, str], replace: tuple[str, str] = ("", "")
) -> int:
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    async with python_child(["-c", test[3].replace(*replace)], env) as child:
        return await child.wait(timeout_s=20)


@pytest.mark.anyio
async def test_compose_commands_run_together(redis_url: str) -> None:
    """worker, janitor and producer as compose runs them (the test server for valkey):
    the healthchecks pass, the producer's batch is sent, and SIGTERM stops both services.

    The worker's metrics move to a free loopback port (compose binds 0.0.0.0:9000).
    """
    env = subprocess_env(redis_url, STREAMQ_EXAMPLE_QUEUE=queue_name())
    worker_argv = [*python_argv(main_process("worker")), "--metrics-port", "0"]
    worker_argv += ["--metrics-host", "127.0.0.1"]
    async with (
        python_child(worker_argv, env) as worker,
        python_child(python_argv(main_process("janitor")), env) as janitor,
    ):
        served = await worker.wait_for_line(
            lambda line: "metrics served" in line, 30, "saying where metrics are served"
        )
        port = str(json.loads(served)["port"])
        compose_port = str(streamq_params("worker")["metrics_port"])
        assert await healthcheck("worker", env, (f":{compose_port}/", f":{port}/")) == 0

        async def janitor_healthy() -> bool:
            return await healthcheck("janitor", env) == 0

        await wait_until(janitor_healthy, timeout=30, description="the janitor's healthcheck")
        producer_argv = python_argv(main_process("producer"))
        jobs = producer_argv[producer_argv.index("--jobs") + 1]
        async with python_child(["-W", "error", *producer_argv], env) as producer:
            assert await producer.wait(timeout_s=60) == 0, producer.output()
        assert producer.stdout[-1].startswith(f"{jobs}/{jobs} sent, 0 failed"), producer.output()
        for child in (worker, janitor):
            child.signal(signal.SIGTERM)
        assert await worker.wait(timeout_s=40) == 0, worker.output()
        assert await janitor.wait(timeout_s=20) == 0, janitor.output()
    assert _events(worker)[-1] == "worker stopped"
    assert _events(janitor)[-1] == "janitor stopped"


def _events(child: Child) -> list[str]:
    return [str(record["event"]) for record in child.records()]
