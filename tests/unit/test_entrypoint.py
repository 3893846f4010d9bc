"""The image's entry point: Weave's environment variables -> ``launch`` flags, checked as
``weave-router launch`` checks them (``cli/entrypoint.py``)."""

from __future__ import annotations

import pytest

from cli import entrypoint
from cli.entrypoint import (
    DOCUMENTED,
    LAUNCH_FLAGS,
    UNSUPPORTED,
    check_launch,
    help_text,
    install_cni_argv,
    launch_argv,
    run,
)
from router.errors import ConfigError


def test_no_environment_launches_with_weave_s_defaults() -> None:
    assert launch_argv({}) == []
    check_launch([], {})


@pytest.mark.parametrize(("name", "value", "flag"), [
    ("IPALLOC_RANGE", "10.40.0.0/16", "--ipalloc-range"),
    ("IPALLOC_DEFAULT_SUBNET", "10.32.4.0/24", "--ipalloc-default-subnet"),
    ("IPALLOC_INIT", "consensus=3", "--ipalloc-init"),
    ("CONN_LIMIT", "30", "--conn-limit"),
    ("NICKNAME", "node-7", "--nickname"),
    ("TRUSTED_SUBNETS", "192.168.0.0/16,10.1.0.0/16", "--trusted-subnets"),
    ("WEAVE_METRICS_ADDR", "0.0.0.0:6782", "--metrics-addr"),
])
def test_each_launch_variable_becomes_its_flag_and_is_accepted(
        name: str, value: str, flag: str) -> None:
    assert launch_argv({name: value}) == [f"{flag}={value}"]
    check_launch(launch_argv({name: value}), {name: value})


def test_variables_read_by_launch_itself_pass_through_and_are_checked() -> None:
    env = {"WEAVE_PASSWORD": "s3cret", "WEAVE_MTU": "1400", "WEAVE_PORT": "6790",
           "WEAVE_HTTP_ADDR": "127.0.0.1:6799", "CHECKPOINT_DISABLE": "1",
           "WEAVE_STATUS_ADDR": "0.0.0.0:6782", "WEAVE_NO_FASTDP": "1"}
    assert launch_argv(env) == []
    check_launch([], env)
    with pytest.raises(ConfigError, match="WEAVE_MTU"):
        check_launch([], {"WEAVE_MTU": "9"})
    with pytest.raises(ConfigError, match="WEAVE_STATUS_ADDR"):
        check_launch([], {"WEAVE_STATUS_ADDR": "nowhere"})


def test_peers_are_split_on_spaces_and_commas_and_come_last() -> None:
    env = {"PEERS": " 10.0.0.1, 10.0.0.2:6790 ", "KUBE_PEERS": "node-3\nnode-4",
           "CONN_LIMIT": "5"}
    argv = launch_argv(env, ["--no-discovery"])
    assert argv == ["--conn-limit=5", "--no-discovery", "--", "10.0.0.1", "10.0.0.2:6790",
                    "node-3", "node-4"]
    check_launch(argv, env)


def test_hostname_is_the_nickname_unless_nickname_is_set() -> None:
    assert launch_argv({"HOSTNAME": "node-1"}) == ["--nickname=node-1"]
    assert launch_argv({"HOSTNAME": "node-1", "NICKNAME": "n"}) == ["--nickname=n"]


def test_extra_args_are_split_as_a_shell_would() -> None:
    argv = launch_argv({"EXTRA_ARGS": "--log-level=debug --dataplane 'reference'"})
    assert argv == ["--log-level=debug", "--dataplane", "reference"]
    check_launch(argv, {})
    with pytest.raises(ConfigError, match=r"^EXTRA_ARGS: No closing quotation$"):
        launch_argv({"EXTRA_ARGS": "--nickname 'x"})
    with pytest.raises(ConfigError, match=r"^launch: unrecognized arguments: --turbo"):
        check_launch(launch_argv({"EXTRA_ARGS": "--turbo"}), {})


@pytest.mark.parametrize(("env", "blamed"), [
    ({"CONN_LIMIT": "lots"}, "CONN_LIMIT (--conn-limit): "),
    ({"IPALLOC_RANGE": "10.0.0.0/33"}, "IPALLOC_RANGE (--ipalloc-range): "),
    ({"IPALLOC_INIT": "quorum"}, "IPALLOC_INIT (--ipalloc-init): "),
    ({"NICKNAME": "a b"}, "NICKNAME (--nickname): "),
    ({"HOSTNAME": "x" * 100}, "HOSTNAME (--nickname): "),
    ({"PEERS": "10.0.0.1:99999"}, "PEERS/KUBE_PEERS (PEER 10.0.0.1:99999"),
])
def test_a_bad_value_is_blamed_on_its_variable(env: dict[str, str], blamed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_launch(launch_argv(env), env)
    assert str(caught.value).startswith(blamed), caught.value
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_weave_variables_without_a_feature_here_are_refused_unless_off(name: str) -> None:
    off, _ = UNSUPPORTED[name]
    with pytest.raises(ConfigError, match=f"^{name}=1\\.2\\.3\\.4: "):
        launch_argv({name: "1.2.3.4"})
    with pytest.raises(ConfigError):
        install_cni_argv({name: "1.2.3.4"})
    assert launch_argv({name: ""}) == []
    if off is not None:
        assert launch_argv({name: off}) == []


def test_install_cni_targets_the_host_root() -> None:
    assert install_cni_argv({}) == [
        "--plugin", str(entrypoint.PLUGIN), "--cni-bin-dir", "/host/opt/cni/bin",
        "--cni-conf-dir", "/host/etc/cni/net.d"]
    argv = install_cni_argv({"HOST_ROOT": "/h", "HAIRPIN_MODE": "false",
                             "WEAVE_HTTP_ADDR": "127.0.0.1:6799"})
    assert argv[3] == "/h/opt/cni/bin" and argv[5] == "/h/etc/cni/net.d"
    assert argv[6:] == ["--no-hairpin", "--http-addr", "127.0.0.1:6799"]
    with pytest.raises(ConfigError, match=r"^HAIRPIN_MODE=no: expected true or false$"):
        install_cni_argv({"HAIRPIN_MODE": "no"})


def test_every_variable_is_in_the_help() -> None:
    text = help_text()
    for name in DOCUMENTED | set(UNSUPPORTED):
        assert f"\n  {name} " in text, name
    assert {v.name for v in LAUNCH_FLAGS} <= DOCUMENTED
    assert all(len(line) <= 100 for line in text.splitlines())


def test_run_reports_a_bad_variable_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([], {"CONN_LIMIT": "-3"}) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("weave-router-entrypoint: error: CONN_LIMIT (--conn-limit): ")
    assert run(["--help"], {}) == 0
    assert "environment:" in capsys.readouterr().out
