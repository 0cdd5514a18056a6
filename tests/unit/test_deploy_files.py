"""Deployment files agree with each other and with config/settings.py (static: no Docker engine needed).

- Procfile has every process of ARCHITECTURE.md ("Processes"), and docker-compose.yml runs each one with the
  same command;
- every IMAGINEQ_* name in docker-compose.yml and .env.example is a real setting, .env.example lists every
  setting with its true default, and its examples and compose's environment build valid Settings;
- every other ${VAR} compose or the Procfile reads is documented in .env.example;
- Redis persists (AOF, named volume) and never evicts; Flower requires basic auth; the simulator only
  runs under the dev profile; workers get enough grace to finish their tasks on SIGTERM.

Each check is a function returning a list of problems; the last tests feed them broken copies of the
real files to show they can fail.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from config.celery import POLL_TIME_LIMIT_S, SUBMIT_TIME_LIMIT_S
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = ("web", "submit", "poll", "store", "notify", "beat", "flower", "simulator")
WORKERS = ("submit", "poll", "store", "notify")
#: Compose commands allowed to extend their Procfile line, and with what.
COMPOSE_EXTRA_ARGS = {
    # Bound to 0.0.0.0 the simulator would hand out result URLs on 127.0.0.1, unreachable from workers.
    "simulator": ["--host", "0.0.0.0", "--result-base-url", "http://simulator:8900"],
    # Like the simulator, the web must listen on every interface of its container.
    "web": ["--host", "0.0.0.0"],
    # The Procfile's Flower listens on 127.0.0.1 (its /metrics needs no login); in a container it must
    # listen on every interface, and compose publishes it on the host's 127.0.0.1 only.
    "flower": ["--address=0.0.0.0"],
}
#: Minimum warm-shutdown grace per worker: the task's hard time limit (store: a long transfer, not 50 min).
MIN_GRACE_S = {"submit": SUBMIT_TIME_LIMIT_S, "poll": POLL_TIME_LIMIT_S, "store": 300}

PREFIX = str(Settings.model_config["env_prefix"])
DELIMITER = str(Settings.model_config["env_nested_delimiter"])

# ${NAME}, ${NAME:-default}, ${NAME:?message} as compose and sh read them; $$ escapes compose's turn.
# The argument holds no "${": an expression nested in a default is replaced first (see interpolate).
_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:(?!\$\{)[^}])*))?\}")
_ENV_LINE = re.compile(r"^#?\s?([A-Z][A-Z0-9_]*)=(.*)$")
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")  # honcho's rule; other lines are ignored


# -- readers --------------------------------------------------------------------------------------------


def read(name: str) -> str:
    return (ROOT / name).read_text()


def parse_procfile(text: str) -> dict[str, str]:
    processes: dict[str, str] = {}
    for line in text.splitlines():
        match = _PROCFILE_LINE.match(line)
        if match:
            if match[1] in processes:
                raise ValueError(f"Procfile: {match[1]} defined twice")
            processes[match[1]] = match[2].strip()
    return processes


def parse_env_example(text: str) -> dict[str, str]:
    """``NAME=value`` lines, commented out or not; single-quoted values unquoted."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            name, value = match[1], match[2].strip()
            if name in values:
                raise ValueError(f".env.example: {name} listed twice")
            if len(value) >= 2 and value[0] == value[-1] == "'":
                value = value[1:-1]
            values[name] = value
    return values


def words(command: str | list[Any] | None) -> list[str]:
    if command is None:
        return []
    return command.split() if isinstance(command, str) else [str(word) for word in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def interpolate(value: str) -> str:
    """Compose's interpolation with nothing set: defaults taken, required values given a placeholder."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match[1], match[2] or "", match[3] or ""
        if "-" in operator:
            return argument
        return f"example-{name.lower()}" if "?" in operator else ""

    while True:  # innermost first: a default may itself be interpolated (``${A:-x${B:?}}``)
        done = _INTERPOLATION.sub(one, value)
        if done == value:
            return done
        value = done


# -- the settings model ---------------------------------------------------------------------------------


def _submodel(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def setting_field(env_name: str) -> FieldInfo | None:
    """The Settings field an environment variable sets (pydantic-settings is case-insensitive), or None."""
    if not env_name.upper().startswith(PREFIX.upper()):
        return None
    model: type[BaseModel] = Settings
    parts = env_name[len(PREFIX) :].lower().split(DELIMITER)
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if depth == len(parts) - 1:
            return field
        submodel = _submodel(field)
        if submodel is None:
            return None
        model = submodel
    return None


def setting_names(model: type[BaseModel] = Settings, prefix: str = PREFIX) -> list[str]:
    """Every leaf setting as its environment variable, nested models walked through the delimiter."""
    names: list[str] = []
    for name, field in model.model_fields.items():
        submodel = _submodel(field)
        if submodel is None:
            names.append(f"{prefix}{name.upper()}")
        else:
            names.extend(setting_names(submodel, f"{prefix}{name.upper()}{DELIMITER}"))
    return names


def settings_from(env: dict[str, str]) -> Settings:
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)  # type: ignore[call-arg]


def value_at(settings: Settings, env_name: str) -> Any:
    value: Any = settings
    for part in env_name[len(PREFIX) :].lower().split(DELIMITER):
        value = getattr(value, part)
    return value


# -- checks ---------------------------------------------------------------------------------------------


def command_problems(procfile: dict[str, str], compose: dict[str, Any]) -> list[str]:
    problems = [f"Procfile lacks {name}" for name in PROCESSES if name not in procfile]
    services = compose.get("services", {})
    for name, line in procfile.items():
        if name not in services:
            problems.append(f"compose has no service for Procfile process {name}")
            continue
        expected = line.split() + COMPOSE_EXTRA_ARGS.get(name, [])
        actual = words(services[name].get("command"))
        if actual != expected:
            problems.append(f"{name}: compose runs {' '.join(actual)!r}, Procfile {' '.join(expected)!r}")
    for name in WORKERS:
        line = procfile.get(name, "")
        for needle in (f"-Q {name}", f"-n {name}@%h", "--prefetch-multiplier 1", "-E"):
            if needle not in line:
                problems.append(f"{name}: worker command lacks {needle!r}")
    return problems


def strings(node: Any) -> list[str]:
    """Every string value in parsed YAML (comments are gone, so only what compose interpolates)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in strings(value)]
    if isinstance(node, list):
        return [text for value in node for text in strings(value)]
    return [node] if isinstance(node, str) else []


def env_problems(compose: dict[str, Any], procfile: dict[str, str], example_text: str) -> list[str]:
    example = parse_env_example(example_text)
    compose_refs = {match[1] for text in strings(compose) for match in _INTERPOLATION.finditer(text)}
    compose_names = {name for service in compose["services"].values() for name in environment(service)}
    problems = [
        f"{where}: {name} is not a setting of config/settings.py"
        for where, names in (
            ("docker-compose.yml", compose_names | compose_refs),
            (".env.example", set(example)),
        )
        for name in sorted(names)
        if name.startswith(PREFIX) and setting_field(name) is None
    ]
    problems += [f".env.example does not list the setting {name}" for name in setting_names() if name not in example]
    procfile_refs = {match[1] for line in procfile.values() for match in _INTERPOLATION.finditer(line)}
    problems += [
        f".env.example does not document {name}, read by docker-compose.yml or Procfile"
        for name in sorted(compose_refs | procfile_refs)
        if not name.startswith(PREFIX) and name not in example
    ]
    return problems


def default_problems(example_text: str) -> list[str]:
    """Every documented value loads; settings with a default are documented with exactly that default."""
    documented = {name: value for name, value in parse_env_example(example_text).items() if name.startswith(PREFIX)}
    try:
        loaded = settings_from(documented)
    except ValueError as error:
        return [f".env.example values do not load: {error}"]
    problems = []
    for name in documented:
        field = setting_field(name)
        default = field.get_default(call_default_factory=True) if field else None
        if default is None or default == [] or default == {}:
            continue  # "unset by default": the line shows an example
        if value_at(loaded, name) != default:
            problems.append(f".env.example: {name}={documented[name]} but the default is {default!r}")
    return problems


def compose_settings_problems(compose: dict[str, Any]) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        env = {key: interpolate(value) for key, value in environment(service).items() if key.startswith(PREFIX)}
        if env:
            try:
                settings_from(env)
            except ValueError as error:
                problems.append(f"{name}: compose environment is not valid Settings: {error}")
    return problems


def redis_problems(compose: dict[str, Any]) -> list[str]:
    redis = compose["services"].get("redis", {})
    command = " ".join(words(redis.get("command")))
    problems = [
        f"redis runs without {flag!r}"
        for flag in ("--appendonly yes", "--maxmemory-policy noeviction", "--maxmemory ")
        if flag not in command
    ]
    named = set(compose.get("volumes") or {})
    mounts = [str(volume).split(":") for volume in redis.get("volumes", [])]
    if not any(len(mount) >= 2 and mount[0] in named and mount[1] == "/data" for mount in mounts):
        problems.append("redis /data is not on a named volume")
    healthcheck = " ".join(words((redis.get("healthcheck") or {}).get("test")))
    if "redis-cli ping" not in healthcheck:
        problems.append("redis has no `redis-cli ping` healthcheck")
    return problems


def flower_problems(procfile: dict[str, str], compose: dict[str, Any]) -> list[str]:
    """Flower requires FLOWER_BASIC_AUTH from its environment (flowerconfig.py), never as an argument."""
    flower = compose["services"].get("flower", {})
    commands = {"Procfile": procfile.get("flower", ""), "docker-compose.yml": " ".join(words(flower.get("command")))}
    problems = []
    for where, command in commands.items():
        if "--basic-auth" in command:
            problems.append(f"{where}: flower's password is on its command line (--basic-auth)")
        if "--conf" in command:
            problems.append(f"{where}: flower must read flowerconfig.py (which requires FLOWER_BASIC_AUTH)")
    if "COPY flowerconfig.py /app/flowerconfig.py" not in read("Dockerfile"):
        problems.append("Dockerfile: the image lacks flowerconfig.py in Flower's working directory")
    if not re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", str(environment(flower).get("FLOWER_BASIC_AUTH", ""))):
        problems.append("docker-compose.yml: flower does not require FLOWER_BASIC_AUTH in its environment")
    return problems


def secret_problems(compose: dict[str, Any]) -> list[str]:
    """Credentials are required (no defaults) and never interpolated into a command line."""
    problems = []
    text = yaml.safe_dump(compose)
    for name in ("REDIS_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        for match in re.finditer(rf"(?<!\$)\$\{{{name}(:?[-?])?", text):
            if match.group(1) != ":?":
                problems.append(f"docker-compose.yml: {name} has a default or is optional")
    for service_name, service in compose["services"].items():
        command = " ".join(words(service.get("command")))
        for secret in re.findall(r"(?<!\$)\$\{([A-Z_]*(?:PASSWORD|SECRET|TOKEN|BASIC_AUTH)[A-Z_]*)", command):
            problems.append(f"{service_name}: {secret} is put on the command line")
    redis = compose["services"].get("redis", {})
    if "requirepass" not in " ".join(words(redis.get("command"))):
        problems.append("redis runs without a password (requirepass)")
    if ":${REDIS_PASSWORD:?" not in str(compose.get("x-redis", {}).get("IMAGINEQ_REDIS_URL", "")):
        problems.append("the app's IMAGINEQ_REDIS_URL has no password")
    return problems


#: The secrets each app process may hold in its environment: the ones it uses, nothing more.
SECRETS = {
    "IMAGINEQ_API_KEY": {"web", "submit", "poll", "store"},
    "IMAGINEQ_ACCOUNTS": {"web", "submit", "poll", "store"},
    "IMAGINEQ_S3__ACCESS_KEY_ID": {"web", "poll", "store", "notify"},
    "IMAGINEQ_S3__SECRET_ACCESS_KEY": {"web", "poll", "store", "notify"},
    "IMAGINEQ_INGRESS_PRINCIPALS": {"web", "notify"},
    "IMAGINEQ_INGRESS_TOKENS": {"web", "notify"},
    "IMAGINEQ_OPS_TOKENS": {"web"},
    "IMAGINEQ_CALLBACKS__HMAC_KEY": {"web"},
    "IMAGINEQ_NOTIFY__SIGNING_SECRET": {"web", "notify"},
    "FLOWER_BASIC_AUTH": {"flower"},
}


def secret_scope_problems(compose: dict[str, Any]) -> list[str]:
    """No app container gets a secret it does not use, nor any file of them whole (.env)."""
    problems = []
    for name in PROCESSES:
        service = compose["services"].get(name, {})
        for secret, users in SECRETS.items():
            if secret in environment(service) and name not in users:
                problems.append(f"{name} is given {secret}, which it does not use")
        files = [entry["path"] if isinstance(entry, dict) else entry for entry in service.get("env_file") or []]
        if ".env" in files:
            problems.append(f"{name} is given .env whole (every secret in it)")
    return problems


#: The `ha` profile's services: Redis's replica and the Sentinels.
HA_SERVICES = ("redis-replica", "sentinel-1", "sentinel-2", "sentinel-3")


def profile_problems(compose: dict[str, Any]) -> list[str]:
    services = compose["services"]
    problems = []
    if services.get("simulator", {}).get("profiles") != ["dev"]:
        problems.append("simulator must run only under profiles: [dev]")
    for name in HA_SERVICES:
        if services.get(name, {}).get("profiles") != ["ha"]:
            problems.append(f"{name} must run only under profiles: [ha]")
    optional = {"simulator", *HA_SERVICES}
    for name, service in services.items():
        if name not in optional and service.get("profiles"):
            problems.append(f"{name} is in profiles {service['profiles']}; only the dev and ha services should be")
        for needed in optional & set(service.get("depends_on") or {}):
            if name not in optional:
                problems.append(f"{name} depends on {needed}, which only a profile starts")
    return problems


def duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text))
    if not parts or "".join(number + unit for number, unit in parts) != str(text):
        raise ValueError(f"not a compose duration: {text!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def service_problems(compose: dict[str, Any]) -> list[str]:
    services = compose["services"]
    problems = []
    for name in PROCESSES:
        service = services.get(name, {})
        if not service.get("build"):
            problems.append(f"{name} does not build from the Dockerfile")
        if name != "simulator":
            condition = ((service.get("depends_on") or {}).get("redis") or {}).get("condition")
            if condition != "service_healthy":
                problems.append(f"{name} does not wait for a healthy redis")
    for name, minimum in MIN_GRACE_S.items():
        grace = services.get(name, {}).get("stop_grace_period", "10s")  # compose's default
        if duration_s(grace) < minimum:
            problems.append(f"{name}: stop_grace_period {grace} is shorter than {minimum} s")
    return problems


# -- the real files ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files() -> dict[str, Any]:
    compose_text = read("docker-compose.yml")
    return {
        "compose_text": compose_text,
        "compose": yaml.safe_load(compose_text),
        "procfile": parse_procfile(read("Procfile")),
        "example_text": read(".env.example"),
    }


def test_procfile_and_compose_run_the_same_commands(files: dict[str, Any]) -> None:
    assert command_problems(files["procfile"], files["compose"]) == []


def test_every_variable_is_a_setting_and_every_setting_is_documented(files: dict[str, Any]) -> None:
    assert env_problems(files["compose"], files["procfile"], files["example_text"]) == []


def test_env_example_shows_the_true_defaults(files: dict[str, Any]) -> None:
    assert default_problems(files["example_text"]) == []


def test_compose_environment_builds_valid_settings(files: dict[str, Any]) -> None:
    assert compose_settings_problems(files["compose"]) == []


def test_the_ha_profile_points_every_app_process_at_the_sentinels(files: dict[str, Any]) -> None:
    from config.settings import load_settings, sentinel_nodes

    compose = files["compose"]
    assert {name for name in HA_SERVICES if compose["services"][name]["profiles"] == ["ha"]} == set(HA_SERVICES)
    ha_url = parse_env_example(files["example_text"])["REDIS_HA_URL"]
    app_env = compose["x-redis"]
    assert app_env["IMAGINEQ_REDIS_URL"].startswith("${REDIS_HA_URL:-")  # when set, it replaces the one Redis
    settings = load_settings(
        redis_url=ha_url,
        redis_sentinel_master=app_env["IMAGINEQ_REDIS_SENTINEL_MASTER"],
        redis_sentinel_password="example",
        api_key="k",
    )
    assert sentinel_nodes(settings.redis_url) == [("sentinel-1", 26379), ("sentinel-2", 26379), ("sentinel-3", 26379)]
    monitored = " ".join(words(compose["services"]["sentinel-1"]["command"]))
    assert f"sentinel monitor {settings.redis_sentinel_master} redis 6379 2" in monitored


def test_redis_persists_and_never_evicts(files: dict[str, Any]) -> None:
    assert redis_problems(files["compose"]) == []


def test_flower_requires_basic_auth(files: dict[str, Any]) -> None:
    assert flower_problems(files["procfile"], files["compose"]) == []


def test_credentials_are_required_and_never_on_a_command_line(files: dict[str, Any]) -> None:
    assert secret_problems(files["compose"]) == []


def test_each_process_gets_only_the_secrets_it_uses(files: dict[str, Any]) -> None:
    assert secret_scope_problems(files["compose"]) == []


def test_simulator_only_in_the_dev_profile(files: dict[str, Any]) -> None:
    assert profile_problems(files["compose"]) == []


def test_app_services_build_wait_for_redis_and_shut_down_warm(files: dict[str, Any]) -> None:
    assert service_problems(files["compose"]) == []


def test_dockerignore_keeps_secrets_and_the_virtualenv_out_of_the_image() -> None:
    lines = [line.strip() for line in read(".dockerignore").splitlines()]
    assert "*" in lines, "expected an allow-list .dockerignore"
    assert not any(line.startswith("!") and (".env" in line or ".venv" in line) for line in lines)


# -- the checks can fail ----------------------------------------------------------------------------------


def _break_compose(files: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    assert old in files["compose_text"], old
    text = files["compose_text"].replace(old, new, 1)
    return {**files, "compose_text": text, "compose": yaml.safe_load(text)}


def _break_example(files: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    assert old in files["example_text"], old
    return {**files, "example_text": files["example_text"].replace(old, new, 1)}


def all_problems(f: dict[str, Any]) -> list[str]:
    return [
        *command_problems(f["procfile"], f["compose"]),
        *env_problems(f["compose"], f["procfile"], f["example_text"]),
        *default_problems(f["example_text"]),
        *compose_settings_problems(f["compose"]),
        *redis_problems(f["compose"]),
        *flower_problems(f["procfile"], f["compose"]),
        *secret_problems(f["compose"]),
        *secret_scope_problems(f["compose"]),
        *profile_problems(f["compose"]),
        *service_problems(f["compose"]),
    ]


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (
            lambda f: _break_compose(f, "-Q poll -n poll@%h -c 8", "-Q poll -n poll@%h -c 9"),
            "poll: compose runs",
        ),
        (
            lambda f: _break_compose(f, "IMAGINEQ_S3__BUCKET: $", "IMAGINEQ_S3__BUKET: $"),
            "IMAGINEQ_S3__BUKET",
        ),
        (lambda f: _break_compose(f, "BASE_URL:-https://", "BASE_URL:-ftp://"), "not valid Settings"),
        (lambda f: _break_compose(f, "--appendonly yes ", ""), "--appendonly yes"),
        (lambda f: _break_compose(f, "- redis-data:/data", "- ./redis:/data"), "named volume"),
        (
            lambda f: _break_compose(
                f, "FLOWER_BASIC_AUTH: ${FLOWER_BASIC_AUTH:?set", "FLOWER_BASIC_AUTH: ${FLOWER_BASIC_AUTH:-set"
            ),
            "docker-compose.yml: flower",
        ),
        (lambda f: _break_compose(f, "profiles: [dev]", "profiles: []"), "simulator must run only"),
        (
            lambda f: _break_compose(f, "${S3_SECRET_KEY:?set S3_SECRET_KEY in .env}", "${S3_SECRET_KEY:-change-me}"),
            "S3_SECRET_KEY has a default",
        ),
        (
            lambda f: _break_compose(
                f,
                "--max_tasks=10000 --address=0.0.0.0",
                "--max_tasks=10000 --address=0.0.0.0 --basic-auth=${FLOWER_BASIC_AUTH}",
            ),
            "FLOWER_BASIC_AUTH is put on the command line",
        ),
        (
            lambda f: _break_compose(f, "stop_grace_period: 150s", "stop_grace_period: 10s"),
            "submit: stop_grace",
        ),
        (
            lambda f: _break_compose(
                f,
                "      <<: *redis-env\n      FLOWER_BASIC_AUTH",
                "      <<: [*redis-env, *upstream-env]\n      FLOWER_BASIC_AUTH",
            ),
            "flower is given IMAGINEQ_API_KEY",
        ),
        (lambda f: _break_compose(f, "    - path: imagineq.env", "    - path: .env"), "given .env whole"),
        (lambda f: _break_compose(f, "${S3_PORT:-8333}", "${S3_API_PORT:-8333}"), "S3_API_PORT"),
        (lambda f: _break_example(f, "# IMAGINEQ_S3__REGION=us-east-1\n", ""), "IMAGINEQ_S3__REGION"),
        (
            lambda f: _break_example(f, "IMAGINEQ_JOB_TTL_S=2592000", "IMAGINEQ_JOB_TTL_S=86400"),
            "the default is",
        ),
    ],
    ids=[
        "worker-concurrency-differs",
        "unknown-setting",
        "invalid-settings",
        "redis-no-aof",
        "redis-bind-mount",
        "flower-no-auth",
        "simulator-not-dev-only",
        "s3-default-secret",
        "password-on-command-line",
        "grace-too-short",
        "secret-given-to-flower",
        "dotenv-given-whole",
        "undocumented-variable",
        "setting-not-listed",
        "wrong-default",
    ],
)
def test_checks_catch_a_broken_file(
    files: dict[str, Any], breaker: Callable[[dict[str, Any]], dict[str, Any]], expected: str
) -> None:
    problems = all_problems(breaker(files))
    assert any(expected in problem for problem in problems), problems


def test_setting_names_resolve_through_nested_models() -> None:
    assert setting_field("IMAGINEQ_S3__BUCKET") is not None
    assert setting_field("imagineq_poll__deadline_s") is not None  # pydantic-settings ignores case
    assert setting_field("IMAGINEQ_S3__NOPE") is None
    assert setting_field("IMAGINEQ_REDIS_URL__X") is None  # not a nested model
    assert setting_field("OTHER_REDIS_URL") is None
