"""Secret values never reach the ledger, even when a container echoes them (DESIGN §5).

The migration and the app's container run with the resolved secrets; what they say
(migration output, a health answer) is recorded only with the values masked."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kuadeploy.config import SecretsConfig
from kuadeploy.pipeline.secrets import MARKER, in_use
from tests.deploy_support import deploy, deploy_service, register, wait_status

pytestmark = pytest.mark.docker

# The checks look for the alphanumeric core, which no encoding (JSON, repr) changes;
# the quotes make repr() and JSON escape the value, so masking must come first.
CORE = "q7Vx2mKp9Lw4Zr8T"
SECRET = f"pw-{CORE}-\"'-end"


@pytest.fixture
def provider(tmp_path: Path) -> SecretsConfig:
    """`[secrets] dir` holding the secret `web/db`."""
    (tmp_path / "secrets" / "web").mkdir(parents=True)
    (tmp_path / "secrets" / "web" / "db").write_text(SECRET + "\n")
    return SecretsConfig(dir=str(tmp_path / "secrets"))


def ledger_files(data: Path) -> dict[str, bytes]:
    """Every file in the data dir: the ledger, its -wal, snapshots, logs."""
    return {str(p): p.read_bytes() for p in data.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("exit_code", "outcome"), [(1, "failed"), (0, "succeeded")])
async def test_a_migration_echoing_a_secret_records_only_the_marker(
    tmp_path, docker_a, sample_app, provider, exit_code, outcome, caplog
):
    caplog.set_level(logging.DEBUG)  # the server's log: every logger, DEBUG included
    data = tmp_path / "data"
    async with deploy_service(data, docker_a, secrets=provider) as api:
        container = {
            "name": sample_app.name,
            "network_mode": "host",
            "env": {"DB_PASSWORD": {"secret": "web/db"}},
        }
        command = ["/bin/busybox", "sh", "-c", f"echo $DB_PASSWORD; exit {exit_code}"]
        migrations = {"paths": ["migrations/**"], "command": command, "approval": "auto"}
        await register(api, sample_app, container=container, migrations=migrations)
        sample_app.add_migration()
        view = await wait_status(api, await deploy(api, sample_app.name))
        assert view["status"] == outcome, view
        migrate = next(s for s in view["steps"] if s["name"] == "migrate")
        recorded = json.dumps(migrate["detail"])
        assert MARKER in recorded, migrate
        if exit_code:
            assert MARKER in view["reason"], view
        answers = [view]
        for path in (
            "/api/v1/events?limit=1000",
            f"/api/v1/apps/{sample_app.name}/progress",
            f"/api/v1/deploys/{view['id']}",
        ):
            status, body, _ = await api.call("GET", path)
            assert status == 200
            answers.append(body)
        text = json.dumps(answers)
        assert CORE not in text and MARKER in text
        live = ledger_files(data)  # while serving: the events are in ledger.db-wal
        assert any(name.endswith("-wal") for name in live), list(live)
        assert in_use() == []  # the log masks values only while their deploy runs
    assert CORE not in caplog.text
    for files in (live, ledger_files(data)):
        for name, content in files.items():
            assert CORE.encode() not in content, name


LEAKY_HEALTHZ = """\
#!/bin/sh
printf 'Status: 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n'
echo "no sha here, but pw=$DB_PASSWORD"
"""


async def deploy_with_healthz(api, sample_app, healthz: str) -> dict:
    """The app with the secret DB_PASSWORD in its env and `healthz` as its health
    script, deployed to its end (a 2 s verify)."""
    entry = sample_app.entry("a")
    entry["container"]["env"] = {"DB_PASSWORD": {"secret": "web/db"}}
    entry["verify"]["timeout_s"] = 2
    await register(api, sample_app, container=entry["container"], verify=entry["verify"])
    sample_app.commit({"www/cgi-bin/healthz": healthz}, "a health script that echoes the env")
    return await wait_status(api, await deploy(api, sample_app.name))


async def test_a_health_answer_echoing_a_secret_records_only_the_marker(
    tmp_path, docker_a, sample_app, provider, caplog
):
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    async with deploy_service(data, docker_a, secrets=provider) as api:
        view = await deploy_with_healthz(api, sample_app, LEAKY_HEALTHZ)
        # the first release: nothing to roll back to, so failed (the app left stopped)
        assert view["status"] == "failed" and "left stopped" in view["reason"], view
        verify = next(s for s in view["steps"] if s["name"] == "verify")
        assert MARKER in verify["detail"]["error"] and MARKER in view["reason"], verify
        status, events, _ = await api.call("GET", "/api/v1/events?limit=1000")
        assert status == 200 and CORE not in json.dumps([view, events])
    assert CORE not in caplog.text
    for name, content in ledger_files(data).items():
        assert CORE.encode() not in content, name


JSON_HEALTHZ = """\
#!/bin/sh
printf 'Status: 200 OK\\r\\nContent-Type: application/json\\r\\n\\r\\n'
printf '{"db": "%s"}\\n' "$(printf '%s' "$DB_PASSWORD" | sed 's/[\\"]/\\\\&/g')"
"""


async def test_a_json_health_answer_echoing_a_secret_records_only_the_marker(
    tmp_path, docker_a, sample_app, provider
):
    """JSON escapes the quotes in the value: the escaped form is the value all the same."""
    data = tmp_path / "data"
    async with deploy_service(data, docker_a, secrets=provider) as api:
        view = await deploy_with_healthz(api, sample_app, JSON_HEALTHZ)
        assert view["status"] == "failed", view
        assert f'{{"db": "{MARKER}"}}' in view["reason"], view["reason"]
        status, events, _ = await api.call("GET", "/api/v1/events?limit=1000")
        assert status == 200 and CORE not in json.dumps([view, events])
    for name, content in ledger_files(data).items():
        assert CORE.encode() not in content, name
