"""fleet.toml: every error path names the file, the key, the bad value and what is allowed; exit code 2,
no traceback. Lookup order and the documented example."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_tui.config import (
    ConfigError,
    EngineConfig,
    FleetConfig,
    ForgeConfig,
    RoleConfig,
    RolesConfig,
    field_descriptions,
    find_config,
    load_config,
    parse_config,
    render_example,
)

ROOT = Path(__file__).resolve().parent.parent

BAD_CONFIGS = [
    ("[roles.dev]\nmax_concurrent = 0\n", "fleet.toml: roles.dev.max_concurrent must be >= 1, got 0"),
    ('[forge]\nkind = "gitlab"\n', "fleet.toml: forge.kind must be one of 'local' or 'github', got 'gitlab'"),
    ('poll_interval_s = "soon"\n', "fleet.toml: poll_interval_s must be a number, got 'soon'"),
    ("poll_interval_s = 0.5\n", "fleet.toml: poll_interval_s must be >= 1, got 0.5"),
    ("[roless]\nx = 1\n", "fleet.toml: unknown key 'roless' (check the spelling; fleet.toml.example lists every key)"),
    ('[roles.qa]\nengine = "gpt"\n',
     "fleet.toml: roles.qa.engine names 'gpt', which is neither in [engines] nor built in "
     "(known: aider, claude, codex, scripted)"),
    ('[forge]\nkind = "github"\nrepo = "just-a-name"\n',
     "fleet.toml: forge.repo must be 'owner/name' when forge.kind is 'github', got 'just-a-name'"),
    ('[runner]\nmemory = "lots"\n', "fleet.toml: runner.memory must look like 512m or 4g, got 'lots'"),
    ('[runner]\nkind = "k8s"\n', "fleet.toml: runner.kind must be one of 'docker', 'local' or 'kubernetes', got 'k8s'"),
    ("[roles.dev]\ntimeout_s = 1.5\n", "fleet.toml: roles.dev.timeout_s must be a whole number, got 1.5"),
    ('[labels]\napproved = " "\n', "fleet.toml: labels.approved must not be empty"),
    ('[ui]\nbell = "yes"\n', "fleet.toml: ui.bell must be true or false, got 'yes'"),
    ('approvers = "alice"\n', "fleet.toml: approvers must be a list, got 'alice'"),
    ("[engines.x]\nkind = \"codex\"\nmax_turns = -1\n", "fleet.toml: engines.x.max_turns must be >= 1, got -1"),
    ("[forge\n", "fleet.toml: not valid TOML: "),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "fleet.toml")
    assert str(info.value).startswith(message)


def _run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleet_tui", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS[:4] + BAD_CONFIGS[-1:])
def test_bad_config_cli_exit_2_no_traceback(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "fleet.toml").write_text(text)
    result = _run_cli("check", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("token", ["ghp_" + "a1B2" * 9, "github_pat_" + "Z" * 30, "gho_" + "x" * 36,
                                   "ghs_" + "y" * 36, "sk-" + "k" * 40])
def test_token_in_config_refused(tmp_path: Path, token: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(f'[forge]\nkind = "github"\nrepo = "o/r"\ntoken = "{token}"\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{path}:4: holds a token-shaped string" in message
    assert token not in message  # the refusal never echoes the secret
    result = _run_cli("check", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2 and token not in result.stderr and "Traceback" not in result.stderr


def test_world_readable_config_with_secret_settings_refused(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[forge]\napp_private_key_path = "/keys/app.pem"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by group/others; run `chmod 600"):
        load_config(path)
    path.chmod(0o600)
    assert load_config(path).forge.app_private_key_path == "/keys/app.pem"


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet_tui.config import user_config_dir

    user = user_config_dir() / "fleet.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    cwd = tmp_path / "work"
    cwd.mkdir()
    assert find_config(cwd=cwd) == user
    (cwd / "fleet.toml").write_text("")
    assert find_config(cwd=cwd) == cwd / "fleet.toml"
    env_file = tmp_path / "env.toml"
    env_file.write_text("")
    monkeypatch.setenv("FLEET_CONFIG", str(env_file))
    assert find_config(cwd=cwd) == env_file
    flag_file = tmp_path / "flag.toml"
    flag_file.write_text("")
    assert find_config(str(flag_file), cwd=cwd) == flag_file
    with pytest.raises(ConfigError, match=r"no such config file \(given by --config\)"):
        find_config(str(tmp_path / "missing.toml"), cwd=cwd)


def test_defaults_need_no_file() -> None:
    config = load_config(None)
    assert config.forge.kind == "local" and config.labels.approved == "approved"
    assert config.roles.qa.max_qa_rounds == 3


def test_every_field_has_a_docstring() -> None:
    def walk(section: object, prefix: str) -> list[str]:
        docs = field_descriptions(type(section))
        missing = []
        for field in dataclasses.fields(section):  # type: ignore[arg-type]
            if not docs.get(field.name, "").strip():
                missing.append(prefix + field.name)
            value = getattr(section, field.name)
            if dataclasses.is_dataclass(value):
                missing += walk(value, f"{prefix}{field.name}.")
        return missing

    assert walk(FleetConfig(), "") == []
    assert walk(EngineConfig(), "engines.NAME.") == []
    assert field_descriptions(FleetConfig)["poll_interval_s"].startswith("Seconds between two polls of the forge")


def test_example_documents_every_key_and_is_current() -> None:
    committed = (ROOT / "fleet.toml.example").read_text()
    assert committed == render_example(), "regenerate: python -c 'from fleet_tui.config import render_example'"
    config = parse_config(committed, "fleet.toml.example")
    assert config == FleetConfig(), "the example shows the defaults"
    for section in ("forge", "labels", "roles.pm", "roles.dev", "roles.qa", "runner", "policy", "ui"):
        assert f"[{section}]" in committed
    for key in ("max_pr_lines", "protected_paths", "budget_usd", "max_concurrent", "api_url", "keys", "pids"):
        assert f"\n{key} = " in committed


def test_several_errors_one_line_each_in_file_order() -> None:
    text = ('poll_interval_s = "soon"\nzzz = 1\n[forge]\nkind = "x"\ntokn = 1\n[roles.dev]\nmax_concurrent = 0\n'
            '[policy]\nprotected_paths = ["a", 2]\n[ui]\nkeys = { approve = 1 }\n')
    with pytest.raises(ConfigError) as info:
        parse_config(text, "fleet.toml")
    assert str(info.value).splitlines() == [
        "fleet.toml: forge.kind must be one of 'local' or 'github', got 'x'",
        "fleet.toml: unknown key 'forge.tokn' (check the spelling; fleet.toml.example lists every key)",
        "fleet.toml: roles.dev.max_concurrent must be >= 1, got 0",
        "fleet.toml: policy.protected_paths.1 must be a string, got 2",
        "fleet.toml: poll_interval_s must be a number, got 'soon'",
        "fleet.toml: ui.keys.approve must be a string, got 1",
        "fleet.toml: unknown key 'zzz' (check the spelling; fleet.toml.example lists every key)",
    ]


def test_values_are_normalised_and_sections_immutable() -> None:
    config = parse_config('poll_interval_s = 5\n[forge]\nkind = "github"\nrepo = " octo/demo "\n'
                          '[runner]\nmemory = " 4G "\n[labels]\napproved = " ok "\n')
    assert config.poll_interval_s == 5.0 and isinstance(config.poll_interval_s, float)
    assert (config.forge.repo, config.runner.memory, config.labels.approved) == ("octo/demo", "4g", "ok")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.forge.repo = "other/repo"  # type: ignore[misc]
    copy = config.model_copy(update={"poll_interval_s": 60})
    assert copy.poll_interval_s == 60.0 and copy.forge == config.forge and copy != config


def test_sections_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match=r"^timeout_s must be >= 10, got 5$"):
        RoleConfig(timeout_s=5)
    with pytest.raises(ValueError, match=r"forge.repo must be 'owner/name' when forge.kind is 'github'"):
        ForgeConfig(kind="github", repo="just-a-name")
    with pytest.raises(ValueError, match=r"roles.dev.engine names 'gpt'"):
        FleetConfig().model_copy(update={"roles": RolesConfig(dev=RoleConfig(engine="gpt"))})


def test_builtin_pm_is_accepted_for_the_pm_only() -> None:
    assert parse_config('[roles.pm]\nengine = "builtin"\n').roles.pm.engine == "builtin"
    with pytest.raises(ConfigError, match="roles.dev.engine names 'builtin'"):
        parse_config('[roles.dev]\nengine = "builtin"\n')


@pytest.mark.parametrize("extra", ["", "approvers = []\n"])
def test_github_without_approvers_is_refused_with_what_to_set(tmp_path: Path, extra: str) -> None:
    (tmp_path / "fleet.toml").write_text(extra + '[forge]\nkind = "github"\nrepo = "octo/demo"\n')
    result = _run_cli("check", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleet.toml: approvers is empty")
    assert 'set approvers = ["your-login"]' in lines[0] and "policy.approvers_with_write = true" in lines[0]


def test_github_with_write_permission_approvals_needs_no_list(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[forge]\nkind = "github"\nrepo = "octo/demo"\n[policy]\napprovers_with_write = true\n')
    assert load_config(path).policy.approvers_with_write
    path.write_text('approvers = ["alice"]\n[forge]\nkind = "github"\nrepo = "octo/demo"\n')
    assert load_config(path).approvers == ["alice"]


@pytest.mark.parametrize(("token", "variable"), [("sk-" + "k" * 40, "OPENAI_API_KEY"),
                                                 ("sk-ant-api03-" + "k" * 40, "ANTHROPIC_API_KEY"),
                                                 ("ghp_" + "a1B2" * 9, "GITHUB_TOKEN")])
def test_token_in_config_names_the_right_variable(tmp_path: Path, token: str, variable: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(f'[engines.x]\nkind = "codex"\nmodel = "{token}"\n')
    path.chmod(0o600)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"export {variable}" in str(info.value)
    others = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GITHUB_TOKEN"} - {variable}
    assert not any(name in str(info.value) for name in others)


def test_engine_strings_take_variables_from_the_environment(tmp_path: Path) -> None:
    text = ('[policy]\ntest_command = "make test ARGS=${KEEP_FOR_SHELL}"\n'
            '[engines.local]\nkind = "codex"\nbase_url = "http://${LLM_HOST}/v1"\nargs = ["$$HOME"]\n')
    config = parse_config(text, environ={"LLM_HOST": "127.0.0.1:8000"})
    assert config.engines["local"].base_url == "http://127.0.0.1:8000/v1"
    assert config.engines["local"].args == ["$HOME"]
    assert config.policy.test_command == "make test ARGS=${KEEP_FOR_SHELL}"  # the shell's, not ours
    with pytest.raises(ConfigError) as info:
        parse_config(text, "fleet.toml", environ={})
    assert str(info.value) == ("fleet.toml: engines.local.base_url: ${LLM_HOST} is not set in the environment; "
                               "export LLM_HOST, or write $$ for a literal $")
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    result = _run_cli("check", cwd=tmp_path)
    assert result.returncode == 2 and "${LLM_HOST} is not set in the environment" in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ('[engines.x]\nkind = "codex"\nwire_api = "grpc"\n', "engines.x.wire_api must be one of"),
    ('[engines.x]\nkind = "codex"\nsandbox = "off"\n', "engines.x.sandbox must be one of"),
    ('[engines.x]\nkind = "codex"\napi_key_env = "MY KEY"\n',
     "engines.x.api_key_env must be an environment variable name"),
    ('[engines.x]\nkind = "codex"\nbase_url = "localhost:8000"\n', "engines.x.base_url must be an http(s) URL"),
])
def test_engine_settings_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(text)


def test_ui_keys_docstring_lists_every_binding_id() -> None:
    from fleet_tui.config import UiConfig
    from fleet_tui.tui.actions import ACTIONS

    doc = field_descriptions(UiConfig)["keys"]
    listed = doc.split("The ids: ", 1)[1].split(".", 1)[0].replace("\n", " ")
    assert [part.strip() for part in listed.split(",")] == [action.id for action in ACTIONS]


def test_readme_toml_examples_load() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 2
    for block in blocks:
        parse_config(block, "README.md", environ={"MODEL_HOST": "127.0.0.1:8000"})
