"""`/hq upgrade app`, `/hq rollback` and `/hq upgrade infra` (issue 6): validation, the one-line
compose edit, plans bound to commits (real git repositories in tmp_path) and execution against
the in-memory deployment of test_rotate."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from commands import upgrade
from commands.deploy import Gate
from commands.infra import gateway
from commands.infra.gateway import CommandTimeout, Completed
from commands.infra.git import Git, parse_ref, parse_sha
from commands.parser import parse
from commands.registry import REGISTRY
from commands.spec import CommandSpec, Plan, Result, Step, UserError
from commands.upgrade import parse_tag, set_service_image, with_tag
from tests.unit.test_rotate import ENV_TEXT, Ctx, FakeDeployment, FakeS3, Infra, governance

ROOT = Path(__file__).resolve().parents[2]


# --- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ref", ["main", "next", "release/1.2", "v0.2.0", "a1b2c3d", "feature_x"])
def test_good_refs_pass(ref: str) -> None:
    assert parse_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    ["", "-x", "--upload-pack=evil", "a..b", "x.lock", "a//b", "a b", "@{u}", "x/", "a" * 101],
)
def test_bad_refs_are_refused(ref: str) -> None:
    with pytest.raises(ValueError):
        parse_ref(ref)


def test_shas_and_tags_are_validated() -> None:
    assert parse_sha("ABCDEF1") == "abcdef1"
    for bad in ("abcde", "xyz1234", "a" * 41, "-abcdef1"):
        with pytest.raises(ValueError):
            parse_sha(bad)
    assert parse_tag("16.2-alpine") == "16.2-alpine"
    for bad in (".x", "-x", "a:b", "a/b", "x" * 129, ""):
        with pytest.raises(ValueError):
            parse_tag(bad)


def test_a_tag_replaces_the_tag_and_keeps_the_repository() -> None:
    assert with_tag("postgres:15", "16.2") == "postgres:16.2"
    assert with_tag("registry:5000/team/pg:15", "16") == "registry:5000/team/pg:16"
    assert with_tag("registry:5000/team/pg", "16") == "registry:5000/team/pg:16"
    assert with_tag("pg:15@sha256:" + "a" * 64, "16") == "pg:16"


# --- the compose file edit ------------------------------------------------------------------------
COMPOSE = """\
# Harmoniq (test)
x-common: &common
  image: base:1   # shared
  restart: unless-stopped

services:
  postgres:
    image: "postgres:15"   # the database
    environment:
      PGDATA: /data
  redis:
    <<: *common
    command: ["redis-server"]
  # a comment between services
  coturn:
    image: coturn/coturn:${COTURN_VERSION}

volumes:
  pgdata:
"""


def test_only_the_services_image_line_changes() -> None:
    text, how = set_service_image(COMPOSE, "postgres", "postgres:16.2")
    assert how == "replaced"
    diff = [(a, b) for a, b in zip(COMPOSE.splitlines(), text.splitlines(), strict=True) if a != b]
    assert diff == [
        ('    image: "postgres:15"   # the database', '    image: "postgres:16.2"   # the database')
    ]
    assert yaml.safe_load(text)["services"]["postgres"]["image"] == "postgres:16.2"


def test_a_service_without_its_own_image_line_gets_one_after_its_merge_keys() -> None:
    text, how = set_service_image(COMPOSE, "redis", "base:2")
    assert how == "added"
    lines = text.splitlines()
    assert lines[lines.index("    <<: *common") + 1] == "    image: base:2"
    assert len(lines) == len(COMPOSE.splitlines()) + 1
    loaded = yaml.safe_load(text)
    assert loaded["services"]["redis"]["image"] == "base:2"
    assert loaded["x-common"]["image"] == "base:1"  # the anchor and other services untouched


def test_images_set_through_variables_and_unknown_services_are_refused() -> None:
    with pytest.raises(UserError) as info:
        set_service_image(COMPOSE, "coturn", "coturn/coturn:4.6")
    assert "not a plain value" in info.value.message
    with pytest.raises(UserError):
        set_service_image(COMPOSE, "pgdata", "x:1")  # a volume, not a service
    with pytest.raises(UserError):
        set_service_image(COMPOSE, "postgres", "Bad Image")


def test_crlf_line_endings_are_kept() -> None:
    text, _ = set_service_image(COMPOSE.replace("\n", "\r\n"), "redis", "base:2")
    assert "    image: base:2\r\n" in text and "\n" not in text.replace("\r\n", "")


def test_the_sandbox_compose_file_gets_one_line() -> None:
    original = (ROOT / "sandbox" / "template" / "docker-compose.yml").read_text()
    text, how = set_service_image(original, "redis", "hq-sandbox:bookworm-2")
    assert how == "added"
    loaded = yaml.safe_load(text)
    assert loaded["services"]["redis"]["image"] == "hq-sandbox:bookworm-2"
    assert loaded["services"]["postgres"]["image"] == "hq-sandbox:bookworm"
    assert len(text.splitlines()) == len(original.splitlines()) + 1


# --- git repositories -----------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": "/dev/null"}  # fmt: skip
    return gateway.run(("git", "-C", str(repo), *args), timeout=30, env=env).text.strip()


def commit(repo: Path, message: str, files: Mapping[str, str]) -> str:
    for name, content in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


MIGRATION = "CREATE TABLE IF NOT EXISTS t (x int);\n"


@pytest.fixture
def repos(tmp_path: Path) -> Any:
    """origin (bare), a work clone that pushes to it, and the deployment's checkout of main."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    c1 = commit(work, "one", {"VERSION": "1\n"})
    git(work, "checkout", "-q", "-b", "next")
    c2 = commit(
        work, "two: migration", {"VERSION": "2\n", "infra/db/migrations/latest.sql": MIGRATION}
    )
    git(work, "checkout", "-q", "main")
    origin = tmp_path / "origin.git"
    gateway.run(("git", "clone", "-q", "--bare", str(work), str(origin)), timeout=30)
    git(work, "remote", "add", "origin", str(origin))
    app = tmp_path / "deploy"
    gateway.run(("git", "clone", "-q", str(origin), str(app)), timeout=30)
    return type("Repos", (), {"work": work, "origin": origin, "app": app, "c1": c1, "c2": c2})


@pytest.fixture
def world(repos: Any, tmp_path: Path, make_settings: Any) -> Any:
    env_path = tmp_path / ".env"
    env_path.write_text(ENV_TEXT)
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(COMPOSE)
    settings = make_settings(
        hq_env_file=env_path,
        hq_compose_file=compose_file,
        hq_compose_project="hq-test",
        hq_deploy_dir=repos.app,
        hq_gate_timeout=2,
    )
    fake = FakeCompose(env_path, "hq-test", compose_file)
    from commands.infra.envfile import EnvFile

    redis = type("Redis", (), {"ping": lambda self: True})()
    infra = Infra(EnvFile(env_path), fake, fake, fake, redis, FakeS3())
    ctx = Ctx(settings, infra, governance=governance(tmp_path))
    return type("World", (), {"ctx": ctx, "fake": fake, "repos": repos})


class FakeCompose(FakeDeployment):
    """The in-memory deployment, plus what upgrades ask of compose: its services, the images
    in the compose file (as `config` shows them), pull, build, and `up` that recreates a service
    whose image changed (and fails for an image that does not exist)."""

    MISSING = "missing"

    def __init__(self, env_path: Path, project: str, compose_file: Path) -> None:
        self.file = compose_file
        super().__init__(env_path, project)
        self.images = {s: self.file_image(s) for s in self.images}

    def file_image(self, service: str) -> str:
        loaded = yaml.safe_load(self.file.read_text())
        return str(loaded["services"].get(service, {}).get("image", "built:latest"))

    def services(self) -> list[str]:
        return sorted(self.images)

    def images_changed(self, service: str) -> bool:
        return self.file_image(service) != self.images.get(service)

    def run(self, argv: tuple[str, ...], timeout: float | None = None) -> Completed:
        if "config" in argv:
            self.calls.append(tuple(argv))
            loaded = yaml.safe_load(self.file.read_text())
            return Completed(tuple(argv), 0, json.dumps(loaded).encode(), b"", 0.1)
        if "pull" in argv:
            self.calls.append(tuple(argv))
            return Completed(tuple(argv), 0, b"", b" redis Skipped \n", 0.1)
        if "up" in argv:
            for service in [w for w in argv[argv.index("up") + 1 :] if not w.startswith("-")]:
                if self.MISSING in self.file_image(service):
                    self.calls.append(tuple(argv))
                    raise UserError(f"no such image: {self.file_image(service)}")
        done = super().run(argv, timeout)
        return done

    def recreate(self, service: str) -> None:
        super().recreate(service)
        if hasattr(self, "file"):
            self.images[service] = self.file_image(service)


def plan_of(world: Any, text: str) -> Plan:
    parsed = parse(text, world.ctx.registry)
    return parsed.spec.plan(parsed.args, world.ctx)


def execute(world: Any, plan: Plan) -> Result:
    spec = world.ctx.registry[plan.command]
    lines: list[str] = []
    return spec.execute(plan, world.ctx, lines.append)  # type: ignore[no-any-return]


# --- upgrade app ----------------------------------------------------------------------------------
def test_the_upgrade_plan_fetches_and_is_bound_to_the_target_commit(world: Any) -> None:
    repos = world.repos
    c3 = commit(repos.work, "three", {"VERSION": "3\n"})
    git(repos.work, "push", "-q", "origin", "main")
    plan = plan_of(world, "upgrade app")
    assert plan.data["from"] == repos.c1 and plan.data["to"] == c3
    assert plan.steps[0].argv == ("git", "-C", str(repos.app), "merge", "--ff-only", "--quiet", c3)
    assert f"from {repos.c1[:12]} to origin/main = {c3[:12]} (1 commit)" in plan.summary
    assert f"• {c3[:7]} three" in plan.summary
    assert plan.steps[1].argv[-2:] == ("build", "backend")
    assert plan.steps[2].argv[-4:] == ("up", "-d", "--no-deps", "backend")
    assert plan.data["migrate"] is None  # main has no migrations file
    assert plan_of(world, "upgrade app").digest() == plan.digest()
    commit(repos.work, "four", {"VERSION": "4\n"})
    git(repos.work, "push", "-q", "origin", "main")
    assert plan_of(world, "upgrade app").digest() != plan.digest()  # the remote moved


def test_a_ref_can_be_a_branch_a_tag_or_a_commit(world: Any) -> None:
    repos = world.repos
    git(repos.work, "tag", "v2", repos.c2)
    git(repos.work, "push", "-q", "origin", "v2")
    for ref, label in (("next", "origin/next"), ("v2", "v2"), (repos.c2[:10], repos.c2[:10])):
        plan = plan_of(world, f"upgrade app --ref {ref}")
        assert plan.data["to"] == repos.c2 and plan.data["ref"] == label
    migrate = plan.data["migrate"]
    assert migrate[-12:] == ["exec", "-T", "postgres", "psql", "-X", "-q", "-v",
                             "ON_ERROR_STOP=1", "-U", "harmoniq", "-d", "harmoniq"]  # fmt: skip


def test_refs_that_are_unknown_deployed_or_behind_are_refused(world: Any) -> None:
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade app --ref nowhere")
    assert "is not a branch of origin" in info.value.message
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade app")
    assert "already at origin/main" in info.value.message
    git(world.repos.app, "checkout", "-q", "--detach", world.repos.c2)
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade app --ref main")
    assert "only moves forward" in info.value.message and "/hq rollback" in info.value.message


def test_a_slow_fetch_shows_the_last_fetched_state_and_says_so(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow(self: Git, remote: str, timeout: float) -> None:
        raise CommandTimeout(("git", "fetch"), timeout)

    monkeypatch.setattr(Git, "fetch", slow)
    plan = plan_of(world, "upgrade app --ref next")
    assert plan.data["to"] == world.repos.c2
    assert "took longer than 2 s" in plan.notes[0] and "last fetched" in plan.notes[0]


def test_an_upgrade_merges_builds_starts_migrates_and_checks(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed: list[bytes] = []
    real = gateway.run

    def psql(argv: tuple[str, ...], **kwargs: Any) -> Completed:
        if "psql" not in argv:
            return real(argv, **kwargs)
        fed.append(kwargs["input"])
        return Completed(argv, 0, b"", b"", 0.1)

    monkeypatch.setattr(upgrade.gateway, "run", psql)
    plan = plan_of(world, "upgrade app --ref next")
    result = execute(world, plan)
    assert result.ok, result
    assert git(world.repos.app, "rev-parse", "HEAD") == world.repos.c2
    assert git(world.repos.app, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert world.fake.calls == [tuple(plan.data["build"]), tuple(plan.data["up"])]
    assert fed == [MIGRATION.encode()]
    assert [r.name for r in result.rows] == [
        "fast-forward the checkout",
        "build the backend image",
        "start the new backend",
        "run the migrations",
        "backend healthy",
    ]


def test_a_failed_build_puts_the_checkout_back(world: Any) -> None:
    plan = plan_of(world, "upgrade app --ref next")
    world.fake.run = _failing_on("build", world.fake.run)  # type: ignore[method-assign]
    result = execute(world, plan)
    assert not result.ok and result.data["failed_at"] == "build"
    assert f"back at {world.repos.c1[:12]}" in result.title
    assert git(world.repos.app, "rev-parse", "main") == world.repos.c1
    assert git(world.repos.app, "rev-parse", "HEAD") == world.repos.c1


def test_a_failure_after_the_start_points_at_rollback(
    world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        upgrade.deploy, "backend_gate", lambda ctx, **_: Gate(False, "HTTP 503", 2.0)
    )
    plan = plan_of(world, "upgrade app --ref next")
    plan = replace(plan, data={**plan.data, "migrate": None})
    result = execute(world, plan)
    assert not result.ok and result.data["failed_at"] == "start"
    assert "HTTP 503" in result.title and f"/hq rollback {world.repos.c1[:12]}" in result.title
    assert git(world.repos.app, "rev-parse", "HEAD") == world.repos.c2


def _failing_on(word: str, run: Any) -> Any:
    def fail(argv: tuple[str, ...], timeout: float | None = None) -> Completed:
        if word in argv:
            raise UserError(f"docker compose {word} failed")
        return run(argv, timeout)  # type: ignore[no-any-return]

    return fail


def test_a_checkout_that_moved_after_the_plan_is_not_touched(world: Any) -> None:
    plan = plan_of(world, "upgrade app --ref next")
    git(world.repos.app, "checkout", "-q", "--detach", world.repos.c2)
    with pytest.raises(UserError) as info:
        execute(world, plan)
    assert "moved since the plan" in info.value.message and world.fake.calls == []


# --- rollback -------------------------------------------------------------------------------------
def _at_c2(world: Any) -> None:
    git(world.repos.app, "merge", "-q", "--ff-only", world.repos.c2)


def test_the_rollback_plan_resolves_the_sha_and_lists_what_it_undoes(world: Any) -> None:
    _at_c2(world)
    repos = world.repos
    plan = plan_of(world, f"rollback {repos.c1[:7]}")
    assert plan.data["to"] == repos.c1 and plan.data["from"] == repos.c2
    assert "undoing 1 commit" in plan.summary and f"• {repos.c2[:7]} two: migration" in plan.summary
    assert plan.steps[0].argv == ("git", "-C", str(repos.app), "checkout", "--quiet", "--detach",
                                  repos.c1)  # fmt: skip
    assert plan.steps[1].argv[-5:] == ("up", "-d", "--no-deps", "--build", "backend")


def test_a_rollback_to_an_unknown_current_or_later_commit_is_refused(world: Any) -> None:
    with pytest.raises(UserError) as info:
        plan_of(world, "rollback deadbeef")
    assert "is not a commit of" in info.value.message
    with pytest.raises(UserError) as info:
        plan_of(world, f"rollback {world.repos.c1}")
    assert "already at" in info.value.message
    git(world.repos.app, "fetch", "-q", "origin")
    with pytest.raises(UserError) as info:
        plan_of(world, f"rollback {world.repos.c2}")
    assert "only goes back" in info.value.message


def test_a_rollback_checks_out_rebuilds_and_checks(world: Any) -> None:
    _at_c2(world)
    plan = plan_of(world, f"rollback {world.repos.c1}")
    result = execute(world, plan)
    assert result.ok, result
    assert git(world.repos.app, "rev-parse", "HEAD") == world.repos.c1
    assert world.fake.calls == [tuple(plan.data["up"])]


def _registry_with_restore(calls: list[str]) -> dict[str, CommandSpec]:
    def plan(args: Mapping[str, Any], ctx: Any) -> Plan:
        return Plan("restore", f"REPLACE the database with {args['backup']}",
                    steps=(Step("stop backend"),), data={"backup": args["backup"]})  # fmt: skip

    def run(plan: Plan, ctx: Any, progress: Any) -> Result:
        calls.append(str(plan.data["backup"]))
        return Result(ok=True, title=f"Restored {plan.data['backup']}")

    restore = CommandSpec("restore", "restore", plan, run, args=REGISTRY["restore"].args)
    return {**REGISTRY, "restore": restore}


def test_a_rollback_with_restore_binds_and_runs_the_restore(world: Any) -> None:
    _at_c2(world)
    calls: list[str] = []
    world.ctx.registry = _registry_with_restore(calls)
    plan = plan_of(world, f"rollback {world.repos.c1} --restore b-20250115-020000-1a2b")
    assert plan.data["restore"]["text"] == "restore b-20250115-020000-1a2b"
    assert "restore: REPLACE the database with b-20250115-020000-1a2b" in plan.as_text()
    result = execute(world, plan)
    assert result.ok and calls == ["b-20250115-020000-1a2b"]
    assert [r.name for r in result.rows][-2:] == ["restore the backup", "backend healthy"]


def test_a_rollback_with_restore_needs_the_restore_command(world: Any) -> None:
    _at_c2(world)
    world.ctx.registry = {k: v for k, v in REGISTRY.items() if k != "restore"}
    with pytest.raises(UserError) as info:
        plan_of(world, f"rollback {world.repos.c1} --restore latest")
    assert "needs the `restore` command" in info.value.message


# --- upgrade infra --------------------------------------------------------------------------------
def test_the_infra_plan_is_bound_to_the_compose_file(world: Any) -> None:
    plan = plan_of(world, "upgrade infra redis 2")
    path = world.ctx.settings.hq_compose_file
    assert plan.data["from"] == "base:1" and plan.data["to"] == "base:2"
    assert plan.data["file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plan.data["pull"][-2:] == ["pull", "redis"]
    assert plan.data["up"][-4:] == ["up", "-d", "--no-deps", "redis"]
    assert "add the `image:` line of redis" in plan.as_text()
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade infra redis 1")
    assert "already runs base:1" in info.value.message
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade infra backend 2")
    assert "/hq upgrade app" in info.value.message
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade infra nginx 2")
    assert "not a service of this deployment" in info.value.message


def test_a_postgres_upgrade_takes_a_backup_first_when_the_bot_can(world: Any) -> None:
    backups: list[str] = []

    def plan(args: Mapping[str, Any], ctx: Any) -> Plan:
        return Plan("backup now", "back up the database", notes=("the last one is 2 h old",))

    def run(plan: Plan, ctx: Any, progress: Any) -> Result:
        backups.append("taken")
        return Result(ok=True, title="Backup db_1 done")

    world.ctx.registry = {**REGISTRY, "backup now": CommandSpec("backup now", "", plan, run)}
    planned = plan_of(world, "upgrade infra postgres 16")
    assert planned.steps[0].title == "take a full database backup first: back up the database"
    assert planned.notes == ("the last one is 2 h old",)
    world.ctx.registry = {k: v for k, v in world.ctx.registry.items() if k != "backup now"}
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade infra postgres 16")
    assert "no `backup now` command" in info.value.message
    assert backups == []


def test_an_infra_upgrade_edits_one_line_pulls_recreates_and_checks(world: Any) -> None:
    with pytest.raises(UserError) as info:
        plan_of(world, "upgrade infra coturn 5")
    assert "set through a variable" in info.value.message
    path = world.ctx.settings.hq_compose_file
    before = path.read_text()
    plan = plan_of(world, "upgrade infra redis 2")
    result = execute(world, plan)
    assert result.ok, result
    assert world.fake.images["redis"] == "base:2"
    after = path.read_text()
    assert [ln for ln in after.splitlines() if ln not in before.splitlines()] == [
        "    image: base:2"
    ]
    rows = {r.name: r.detail for r in result.rows}
    assert rows["pull base:2"].startswith("skipped")
    assert "redis runs base:2 and is healthy" in rows


def test_a_failed_infra_upgrade_puts_the_file_back_byte_for_byte(world: Any) -> None:
    path = world.ctx.settings.hq_compose_file
    before = path.read_bytes()
    plan = plan_of(world, "upgrade infra redis missing")
    result = execute(world, plan)
    assert not result.ok and result.data["restored"] is True, result
    assert path.read_bytes() == before
    assert world.fake.images["redis"] == "base:1"
    assert "Put back: base:1" in result.title


def test_an_infra_plan_made_on_another_file_is_not_run(world: Any) -> None:
    plan = plan_of(world, "upgrade infra redis 2")
    path = world.ctx.settings.hq_compose_file
    path.write_text(path.read_text() + "\n# edited by hand\n")
    with pytest.raises(UserError) as info:
        execute(world, plan)
    assert "changed since the plan" in info.value.message


def test_the_git_client_runs_only_its_own_argv_and_names_a_folder_that_is_no_checkout(
    tmp_path: Path,
) -> None:
    with pytest.raises(UserError) as info:
        Git(tmp_path).check()
    assert "is not a git checkout" in info.value.message
    with pytest.raises(UserError):
        Git(tmp_path).run_argv(("git", "-C", "/elsewhere", "status"))
