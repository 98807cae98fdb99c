"""compose.yaml, the Dockerfile, grafana.ini, Grafana's provisioning and secrets/ read as data.

No Docker engine or Grafana server runs here, so these tests check what the files promise:
every mounted file exists, images are pinned, every service has a healthcheck and waits for
healthy dependencies, only Grafana is published (on loopback), and no password is written into
any of them. The perfwatch config files compose mounts are loaded by the real loaders.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from support.alertmanager import amtool

import perfwatch
from perfwatch.archiver.alerthistory import WEBHOOK_PATH
from perfwatch.exporter.settings import load_settings as load_exporter_settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DATASOURCES = yaml.safe_load((REPO / "provisioning/grafana/datasources/perfwatch.yaml").read_text())
PROVIDERS = yaml.safe_load((REPO / "provisioning/grafana/dashboards/perfwatch.yaml").read_text())
PROMETHEUS = yaml.safe_load((REPO / "provisioning/prometheus/prometheus.yml").read_text())
ALERTMANAGER_YML = REPO / "provisioning/alertmanager/alertmanager.yml"
FILE_REF = re.compile(r"\$__file\{([^}]*)\}")
ENV_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def grafana_ini() -> configparser.RawConfigParser:
    ini = configparser.RawConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=None, strict=True)
    ini.read_string((REPO / "grafana/grafana.ini").read_text())
    return ini


def expand_defaults(text: str) -> str:
    """What compose substitutes with no environment set: `${VAR:-default}` → default."""
    return ENV_DEFAULT.sub(lambda m: m.group(2), text)


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, options) of the service's volumes whose source is a path."""
    out = []
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if source.startswith(("/", ".")):
            out.append((source, target, options[0] if options else ""))
    return out


def mount_target(service: str, source: str) -> str:
    return next(t for s, t, _ in bind_mounts(SERVICES[service]) if s == source)


def secret_path(name: str) -> str:
    return f"/run/secrets/{name}"


# -- compose.yaml ---------------------------------------------------------------------------------


def test_compose_has_the_whole_stack() -> None:
    assert set(SERVICES) == {"postgres", "exporter", "archiver", "prometheus", "alertmanager", "grafana"}


def test_docker_compose_accepts_the_file() -> None:
    """Debian's docker-compose (1.29) validates the file against the compose schema; no engine needed."""
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose not found: install Debian's docker-compose package (scripts/test does)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "COMPOSE_"))}
    result = subprocess.run([exe, "--file", str(REPO / "compose.yaml"), "config"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(SERVICES)
    assert resolved["services"]["grafana"]["ports"] == ["127.0.0.1:3000:3000/tcp"]
    assert all("ports" not in s for n, s in resolved["services"].items() if n != "grafana")


def test_every_repository_file_compose_mounts_exists() -> None:
    mounted = set()
    for name, service in SERVICES.items():
        for source, _target, _ in bind_mounts(service):
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
                mounted.add(source)
    assert mounted == {"./provisioning/postgres/10-perfwatch-roles.sh", "./provisioning/perfwatch/exporter.yml",
                       "./provisioning/perfwatch/archiver.yml", "./provisioning/prometheus", "./grafana/grafana.ini",
                       "./provisioning/grafana", "./grafana/dashboards", "./provisioning/alertmanager"}
    assert (REPO / SERVICES["exporter"]["build"] / "Dockerfile").is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_images_are_pinned(name: str) -> None:
    image = SERVICES[name]["image"]
    repo, _, tag = image.rpartition(":")
    assert repo and "/" not in tag, f"{name}: {image} has no tag"
    assert re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?", tag), f"{name}: {image} is not pinned to a version"


def test_perfwatch_image_is_this_version_built_here() -> None:
    version = perfwatch.__version__
    for name in ("exporter", "archiver"):
        assert SERVICES[name]["image"] == f"perfwatch:{version}"
        assert SERVICES[name]["build"] == "."


def test_dockerfile_base_image_is_pinned_and_copies_what_exists() -> None:
    dockerfile = (REPO / "Dockerfile").read_text().splitlines()
    bases = [line.split()[1] for line in dockerfile if line.startswith("FROM ")]
    assert bases and all(re.search(r":\d+\.\d+\.\d+-", base) for base in bases), bases
    ignored_everything = (REPO / ".dockerignore").read_text().splitlines()[1] == "*"
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for line in dockerfile:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert ignored_everything and source.split("/")[0] in allowed, f"{source} is left out by .dockerignore"
                assert (REPO / source).exists(), line


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] == "CMD", "exec form: no shell needed in the image"
    command = " ".join(check["test"][1:])
    expected = {"postgres": "pg_isready", "exporter": "/-/ready", "archiver": "/-/ready",
                "prometheus": "/-/ready", "alertmanager": "/-/ready", "grafana": "/api/health"}[name]
    assert expected in command
    assert {"interval", "timeout", "retries", "start_period"} <= set(check)


def test_dependencies_wait_until_healthy() -> None:
    edges = 0
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES
            assert condition == {"condition": "service_healthy"}, f"{name} → {dependency}"
            edges += 1
    assert SERVICES["archiver"]["depends_on"].keys() == {"postgres", "exporter"}
    assert SERVICES["grafana"]["depends_on"].keys() == {"prometheus", "postgres"}
    assert SERVICES["prometheus"]["depends_on"].keys() == {"exporter", "archiver", "alertmanager"}
    assert SERVICES["alertmanager"]["depends_on"].keys() == {"archiver"}
    assert edges == 8


def test_only_grafana_is_published_and_on_loopback_by_default() -> None:
    for name, service in SERVICES.items():
        assert "network_mode" not in service, f"{name} would leave the internal network"
        if name != "grafana":
            assert "ports" not in service, f"{name} publishes a port"
            assert service["networks"] == ["backend"]
    (port,) = SERVICES["grafana"]["ports"]
    assert expand_defaults(port) == "127.0.0.1:3000:3000"
    assert COMPOSE["networks"]["backend"] == {"internal": True}


def test_exporter_sees_the_host_read_only_with_only_the_perf_capability() -> None:
    exporter = SERVICES["exporter"]
    mounts = {source: (target, options) for source, target, options in bind_mounts(exporter)}
    config = load_exporter_settings(REPO / "provisioning/perfwatch/exporter.yml")[0]
    assert mounts["/proc"] == (config.procfs, "ro")
    assert mounts["/sys"] == (config.sysfs, "ro")
    assert mounts["/"] == (config.rootfs, "ro,rslave")
    assert exporter["cap_drop"] == ["ALL"] and exporter["cap_add"] == ["PERFMON"]
    assert "privileged" not in exporter
    assert exporter["read_only"] is True
    assert "no-new-privileges:true" in exporter["security_opt"]
    assert mount_target("exporter", "./provisioning/perfwatch/exporter.yml") in exporter["command"]


def test_no_password_is_written_into_compose() -> None:
    for name, service in SERVICES.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|KEY", key):
                assert key.endswith("_FILE"), f"{name}: {key}={value} puts a secret in the environment"
                secret = Path(value).name
                assert value == secret_path(secret) and secret in service["secrets"], f"{name}: {key}"
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str | int) and re.search(r"(?i)passw|secret", str(key)):
                    assert str(key).endswith("_FILE"), f"{path}.{key}: a secret written into compose.yaml"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                assert not (isinstance(value, str) and re.search(r"(?i)passw\w*=", value)), f"{path}[{i}]: {value}"
                walk(value, f"{path}[{i}]")

    walk(COMPOSE, "compose")


def test_services_get_exactly_the_secrets_their_config_reads() -> None:
    ini_text = "\n".join(line for line in (REPO / "grafana/grafana.ini").read_text().splitlines()
                         if not line.startswith(("#", ";")))
    ini_files = set(FILE_REF.findall(ini_text))
    datasource_files = set(FILE_REF.findall((REPO / "provisioning/grafana/datasources/perfwatch.yaml").read_text()))
    grafana_env = set(SERVICES["grafana"]["environment"].values())
    assert {secret_path(s) for s in SERVICES["grafana"]["secrets"]} == ini_files | datasource_files | grafana_env
    archiver_cfg = yaml.safe_load((REPO / "provisioning/perfwatch/archiver.yml").read_text())
    assert {secret_path(s) for s in SERVICES["archiver"]["secrets"]} == {archiver_cfg["database"]["dsn_file"]}
    init = (REPO / "provisioning/postgres/10-perfwatch-roles.sh").read_text()
    assert 'secrets="${PERFWATCH_SECRETS_DIR:-/run/secrets}"' in init
    postgres_reads = {secret_path(name) for name in re.findall(r'"\$secrets/(\w+)"', init)}
    postgres_reads.add(SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"])
    assert {secret_path(s) for s in SERVICES["postgres"]["secrets"]} == postgres_reads


# -- secrets/ -------------------------------------------------------------------------------------


def test_repository_holds_no_secret_files() -> None:
    tracked = subprocess.run(["git", "ls-files", "secrets"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert set(tracked) <= {"secrets/.gitignore", "secrets/README.md", "secrets/generate"}
    for name in COMPOSE["secrets"]:
        assert f"secrets/{name}" not in tracked
        ignored = subprocess.run(["git", "check-ignore", "-q", f"secrets/{name}"], cwd=REPO)
        assert ignored.returncode == 0, f"secrets/{name} would not be ignored by git"


def test_generate_makes_every_secret_random_private_and_consistent(tmp_path: Path) -> None:
    generate = REPO / "secrets/generate"
    first, second = tmp_path / "a", tmp_path / "b"
    for target in (first, second):
        subprocess.run([str(generate), str(target)], check=True, capture_output=True, text=True)
    names = set(COMPOSE["secrets"])
    assert {p.name for p in first.iterdir()} == names
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    for name in names:
        a, b = (first / name).read_text(), (second / name).read_text()
        assert stat.S_IMODE((first / name).stat().st_mode) == 0o644
        assert a != b and len(a) >= 24 and "\n" not in a, name
    admin = (first / "grafana_admin_password").read_text()
    assert all(re.search(p, admin) for p in ("[A-Z]", "[a-z]", "[0-9]", "[^A-Za-z0-9]")) and len(admin) >= 12
    dsn = conninfo_to_dict((first / "archiver_dsn").read_text())
    assert dsn["password"] == (first / "archiver_db_password").read_text()
    assert (dsn["host"], dsn["dbname"], dsn["user"]) == ("postgres", "perfwatch", "perfwatch_writer")
    # Running it again keeps what exists.
    before = {name: (first / name).read_text() for name in names}
    out = subprocess.run([str(generate), str(first)], check=True, capture_output=True, text=True).stdout
    assert out.count("kept") == len(names)
    assert before == {name: (first / name).read_text() for name in names}


def test_generate_builds_the_dsn_from_a_password_written_by_hand(tmp_path: Path) -> None:
    """secrets/README.md invites writing your own passwords: the DSN must carry any of them intact."""
    password = "p@ss/w:rd#1% it's \\ ü"
    (tmp_path / "archiver_db_password").write_text(password)
    subprocess.run([str(REPO / "secrets/generate"), str(tmp_path)], check=True, capture_output=True, text=True)
    dsn = conninfo_to_dict((tmp_path / "archiver_dsn").read_text())
    assert (dsn["password"], dsn["host"], dsn["user"]) == (password, "postgres", "perfwatch_writer")


# -- grafana.ini ----------------------------------------------------------------------------------


def test_grafana_ini_locks_grafana_down() -> None:
    ini = grafana_ini()
    expected = {
        ("auth.anonymous", "enabled"): "false",
        ("users", "allow_sign_up"): "false",
        ("users", "allow_org_create"): "false",
        ("auth.basic", "password_policy"): "true",
        ("analytics", "reporting_enabled"): "false",
        ("analytics", "check_for_updates"): "false",
        ("analytics", "check_for_plugin_updates"): "false",
        ("snapshots", "external_enabled"): "false",
        ("security", "disable_gravatar"): "true",
        ("security", "disable_brute_force_login_protection"): "false",
        ("security", "admin_password"): "$__file{/run/secrets/grafana_admin_password}",
        ("security", "secret_key"): "$__file{/run/secrets/grafana_secret_key}",
    }
    for (section, key), value in expected.items():
        assert ini.get(section, key) == value, f"[{section}] {key}"
    # The admin password variable compose sets names the same file as grafana.ini.
    assert SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == \
        ini.get("security", "admin_password")[len("$__file{"):-1]


def test_grafana_mounts_match_what_grafana_reads() -> None:
    assert mount_target("grafana", "./grafana/grafana.ini") == "/etc/grafana/grafana.ini"
    assert mount_target("grafana", "./provisioning/grafana") == "/etc/grafana/provisioning"
    (provider,) = PROVIDERS["providers"]
    assert mount_target("grafana", "./grafana/dashboards") == provider["options"]["path"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False and provider["disableDeletion"]
    assert mount_target("prometheus", "./provisioning/prometheus") == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


# -- Grafana datasources --------------------------------------------------------------------------


def datasource(uid: str) -> dict[str, Any]:
    found: dict[str, Any]
    (found,) = [d for d in DATASOURCES["datasources"] if d["uid"] == uid]
    return found


def test_datasources_have_pinned_uids_and_no_stored_password() -> None:
    assert sorted(d["uid"] for d in DATASOURCES["datasources"]) == ["archive", "prometheus"]
    for d in DATASOURCES["datasources"]:
        assert d["editable"] is False and d["access"] == "proxy"
        assert "password" not in d and "basicAuthPassword" not in d
        for value in (d.get("secureJsonData") or {}).values():
            assert FILE_REF.fullmatch(value), f"{d['uid']}: a secret not read from a file"


def test_provisioning_files_use_dollar_only_for_file_secrets() -> None:
    """Grafana expands $VAR and ${VAR} from its environment in every provisioning value ($$ is a
    literal $): a stray $ would be replaced by an empty string."""
    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for value in node.values() for s in strings(value)]
        if isinstance(node, list):
            return [s for value in node for s in strings(value)]
        return [node] if isinstance(node, str) else []

    for path in (REPO / "provisioning/grafana").rglob("*.yaml"):
        for value in strings(yaml.safe_load(path.read_text())):
            assert "$" not in FILE_REF.sub("", value), f"{path}: {value!r} has a $ Grafana would expand"


def test_prometheus_datasource_interval_is_the_scrape_interval() -> None:
    prometheus = datasource("prometheus")
    assert prometheus["type"] == "prometheus" and prometheus["isDefault"] is True
    assert prometheus["jsonData"]["timeInterval"] == PROMETHEUS["global"]["scrape_interval"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert prometheus["jsonData"]["prometheusVersion"] == SERVICES["prometheus"]["image"].rpartition(":v")[2]


def test_archive_datasource_is_the_grafana_postgresql_type_with_database_in_json_data() -> None:
    archive = datasource("archive")
    assert archive["type"] == "grafana-postgresql-datasource"
    # Grafana 12: a top-level `database` (or the old alias) breaks provisioned dashboards.
    assert "database" not in archive
    assert archive["jsonData"]["database"] == SERVICES["postgres"]["environment"]["POSTGRES_DB"]
    assert archive["url"] == "postgres:5432"
    assert archive["user"] == "perfwatch_grafana"
    assert archive["secureJsonData"]["password"] == "$__file{/run/secrets/grafana_db_password}"
    archiver_cfg = yaml.safe_load((REPO / "provisioning/perfwatch/archiver.yml").read_text())
    assert archive["jsonData"]["timeInterval"] == archiver_cfg["scrape_interval"]
    image_major = SERVICES["postgres"]["image"].split(":")[1].split(".")[0]
    assert archive["jsonData"]["postgresVersion"] == int(image_major) * 100


# -- the perfwatch configs compose mounts ---------------------------------------------------------


def test_prometheus_scrapes_the_compose_services_on_their_configured_ports() -> None:
    exporter = load_exporter_settings(REPO / "provisioning/perfwatch/exporter.yml")[0]
    archiver_cfg = yaml.safe_load((REPO / "provisioning/perfwatch/archiver.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in PROMETHEUS["scrape_configs"]}
    assert jobs["perfwatch"] == [f"exporter{exporter.listen}"]
    assert jobs["perfwatch-archiver"] == [f"archiver{archiver_cfg['listen']}"]
    assert jobs["prometheus"] == ["localhost:9090"]
    assert archiver_cfg["scrape_interval"] == PROMETHEUS["global"]["scrape_interval"]


def test_prometheus_writes_to_and_reads_from_the_archiver_which_scrapes_nothing_itself() -> None:
    """Many hosts: Prometheus scrapes, the archive stores (remote_write) and answers old ranges
    (remote_read). The archiver scraping the same hosts too would store every sample twice."""
    archiver_cfg = yaml.safe_load((REPO / "provisioning/perfwatch/archiver.yml").read_text())
    base = f"http://archiver{archiver_cfg['listen']}"
    assert [w["url"] for w in PROMETHEUS["remote_write"]] == [f"{base}/api/v1/write"]
    assert [(r["url"], r["read_recent"]) for r in PROMETHEUS["remote_read"]] == [(f"{base}/api/v1/read", False)]
    assert archiver_cfg["receive"] == {"remote_write": True, "remote_read": True, "alertmanager_webhook": True}
    assert "targets" not in archiver_cfg and "file_sd_configs" not in archiver_cfg


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = amtool("check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and " - 1 receivers" in result.stdout, result.stdout


def test_every_alert_reaches_the_archivers_webhook_resolutions_included() -> None:
    """amtool walks the routing tree for the labels of every alerting rule (and of an alert no rule
    has): each one ends at the receiver whose only webhook is the archiver's, which compose opens."""
    archiver_cfg = yaml.safe_load((REPO / "provisioning/perfwatch/archiver.yml").read_text())
    assert archiver_cfg["receive"]["alertmanager_webhook"] is True
    url = f"http://archiver{archiver_cfg['listen']}{WEBHOOK_PATH}"
    config = yaml.safe_load(ALERTMANAGER_YML.read_text())
    (receiver,) = config["receivers"]
    assert receiver["webhook_configs"] == [{"url": url, "send_resolved": True}]
    rules = [rule for group in yaml.safe_load((REPO / "provisioning/prometheus/rules/alerts.yml").read_text())["groups"]
             for rule in group["rules"] if "alert" in rule]
    assert len(rules) >= 20
    label_sets = [[f"alertname={r['alert']}", f"severity={r['labels']['severity']}", "instance=exporter:10280"]
                  for r in rules] + [["alertname=SomethingElse"]]
    for labels in label_sets:
        result = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_YML}", *labels)
        assert result.returncode == 0 and result.stdout.strip() == receiver["name"], (labels, result.stdout)


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    alertmanager = SERVICES["alertmanager"]
    assert PROMETHEUS["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["alertmanager:9093"]}]}]}
    assert "http://127.0.0.1:9093/-/ready" in alertmanager["healthcheck"]["test"]  # 9093: its default port
    target = mount_target("alertmanager", "./provisioning/alertmanager")
    assert f"--config.file={target}/{ALERTMANAGER_YML.name}" in alertmanager["command"]
    storage = [v.split(":")[1] for v in alertmanager["volumes"] if v.startswith("alertmanager-data:")]
    assert [f"--storage.path={s}" for s in storage] == [c for c in alertmanager["command"]
                                                        if c.startswith("--storage.path=")]
    assert "--cluster.listen-address=" in alertmanager["command"]  # alone: no gossip port


def test_archiver_config_compose_mounts_is_valid() -> None:
    from perfwatch.archiver.settings import load_settings as load_archiver_settings

    settings = load_archiver_settings(REPO / "provisioning/perfwatch/archiver.yml")
    assert settings.database.dsn_file == secret_path("archiver_dsn")
    assert settings.scrape_targets() == [] and settings.has_sources()
    volume_targets = [v.split(":")[1] for v in SERVICES["archiver"]["volumes"] if v.startswith("archiver-data:")]
    assert volume_targets == [settings.data_dir]


def test_postgres_init_script_is_executable_shell() -> None:
    script = REPO / "provisioning/postgres/10-perfwatch-roles.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
