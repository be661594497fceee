"""Unit tests of vtorque.config and `vtorque config check` (faults item 20)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from vtorque.admin import cli
from vtorque import config as config_mod
from vtorque.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "vtorque.yaml"


def problems_of(text: str, path: str = "/etc/vtorque/test.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_mod.parse(text, path)
    assert info.value.path == path
    assert path in str(info.value)
    return info.value.problems


def test_defaults_load_from_an_empty_file(tmp_path: Path, pool_dir: Path) -> None:
    path = tmp_path / "vtorque.yaml"
    path.write_text(f"image_pool: {pool_dir}\n")
    cfg = config_mod.load(str(path))
    assert cfg.path == str(path)
    assert cfg.image_pool == str(pool_dir)
    assert cfg.state_dir == "/var/lib/vtorque/jobs"
    assert cfg.ramdisk_dir == "/dev/shm/vtorque"
    assert cfg.min_free_space == 1024
    assert cfg.hypervisor == "auto"
    assert cfg.libvirt_uri == "qemu:///system"
    assert (cfg.qemu_user, cfg.qemu_group) == ("libvirt-qemu", "kvm")
    assert cfg.machine_type == "q35"
    assert (cfg.host_reserve.cores, cfg.host_reserve.memory) == (1, 1024)
    assert cfg.defaults.img is None and cfg.defaults.distro is None
    assert (cfg.defaults.vcpus, cfg.defaults.ram, cfg.defaults.vms_per_node) == (1, 1024, 1)
    assert cfg.defaults.vcpu_pinning is False and cfg.defaults.vrdma is False
    assert (cfg.defaults.disk, cfg.defaults.fs_type, cfg.defaults.arch) == (0, "sharedfs",
                                                                            "x86_64")
    assert (cfg.limits.vcpus, cfg.limits.ram, cfg.limits.min_ram) == (64, 256 << 10, 64)
    assert (cfg.limits.vms_per_node, cfg.limits.disk) == (8, 100 << 10)
    assert (cfg.timeouts.provision, cfg.timeouts.guest_ready, cfg.timeouts.teardown) == \
        (240.0, 180.0, 60.0)
    assert cfg.network.mode == "none"
    assert (cfg.network.name, cfg.network.bridge, cfg.network.mac_prefix) == \
        ("default", "br0", "52:54:00")


def test_truly_empty_file_only_misses_the_pool(tmp_path: Path) -> None:
    # The default image_pool does not exist here: the one problem names that key.
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(path))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("image_pool: ")
    assert "does not exist" in info.value.problems[0]


def test_every_default_passes_its_own_check() -> None:
    for key, field in config_mod.iter_fields():
        if key == "image_pool":
            continue  # checked for existence
        field.check(field.default)  # raises ValueError if a default is invalid
        assert field.doc, f"{key} has no documentation"


def _yaml_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        if isinstance(value, dict):
            keys |= _yaml_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_shipped_file_documents_every_key() -> None:
    shipped = yaml.safe_load(SHIPPED.read_text())
    schema_keys = {key for key, _field in config_mod.iter_fields()}
    assert _yaml_keys(shipped) == schema_keys


def test_shipped_file_shows_the_defaults() -> None:
    # "the value shown is its default": every shipped value checks to the same as the default.
    shipped = yaml.safe_load(SHIPPED.read_text())
    for key, field in config_mod.iter_fields():
        if key == "image_pool":
            assert shipped[key] == field.default
            continue
        value = shipped
        for part in key.split("."):
            value = value[part]
        assert field.check(value) == field.check(field.default), key


def test_shipped_file_only_fails_on_the_missing_pool() -> None:
    if os.path.isdir("/var/lib/vtorque/images"):
        pytest.skip("the shipped image_pool exists on this machine")
    problems = problems_of(SHIPPED.read_text(), str(SHIPPED))
    assert len(problems) == 1 and problems[0].startswith("image_pool: ")


def test_every_problem_is_reported_at_once(pool_dir: Path) -> None:
    text = f"""\
image_pool: {pool_dir}
colour: blue
hypervisor: xen
state_dir: relative/path
limits:
  vcpus: 0
  ram: lots
  typo: 1
timeouts:
  provision: -5
network:
  mode: wifi
  mac_prefix: "01:00:5e"
"""
    problems = problems_of(text)
    keys = [p.split(":", 1)[0] for p in problems]
    assert sorted(keys) == sorted(["colour", "hypervisor", "state_dir", "limits.vcpus",
                                   "limits.ram", "limits.typo", "timeouts.provision",
                                   "network.mode", "network.mac_prefix"])


def test_config_error_message_names_file_and_first_key(pool_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.parse(f"image_pool: {pool_dir}\nbogus: 1\nother: 2\n", "/x/v.yaml")
    assert str(info.value) == "config /x/v.yaml: bogus: unknown key (and 1 more)"


@pytest.mark.parametrize("text, key, reason", [
    ("bogus: 1", "bogus", "unknown key"),
    ("defaults: {vcpu: 2}", "defaults.vcpu", "unknown key"),
    ("limits: 5", "limits", "expected a mapping"),
    ("limits: {vcpus: '4'}", "limits.vcpus", "expected an integer"),
    ("limits: {vcpus: true}", "limits.vcpus", "expected an integer"),
    ("limits: {vcpus: 4.5}", "limits.vcpus", "expected an integer"),
    ("limits: {vcpus: 5000}", "limits.vcpus", "from 1 to 4096, got 5000"),
    ("limits: {vms_per_node: 0}", "limits.vms_per_node", "from 1 to 256, got 0"),
    ("host_reserve: {cores: -1}", "host_reserve.cores", "from 0 to 1024"),
    ("limits: {ram: 8M}", "limits.ram", "at least 16M"),
    ("limits: {ram: 1.5G}", "limits.ram", "expected a size"),
    ("limits: {ram: [1]}", "limits.ram", "expected a size"),
    ("min_free_space: 512B", "min_free_space", "expected a size"),
    ("timeouts: {teardown: 0}", "timeouts.teardown", "above 0"),
    ("timeouts: {teardown: 90000}", "timeouts.teardown", "at most 86400"),
    ("timeouts: {teardown: 'soon'}", "timeouts.teardown", "number of seconds"),
    ("hypervisor: xen", "hypervisor", "expected one of auto, kvm, qemu"),
    ("machine_type: isapc", "machine_type", "expected one of q35, pc"),
    ("defaults: {fs_type: nfs}", "defaults.fs_type", "expected one of sharedfs, ramdisk"),
    ("defaults: {vrdma: maybe}", "defaults.vrdma", "expected yes or no"),
    ("defaults: {vrdma: 3}", "defaults.vrdma", "expected true or false"),
    ("defaults: {img: ../etc}", "defaults.img", "expected a name"),
    ("qemu_user: 'root; rm'", "qemu_user", "expected a name"),
    ("state_dir: var/lib", "state_dir", "absolute path"),
    ("state_dir: 5", "state_dir", "absolute path"),
    ("libvirt_uri: localhost", "libvirt_uri", "libvirt URI"),
    ("network: {mac_prefix: '52:54'}", "network.mac_prefix", "three hex octets"),
    ("network: {mac_prefix: '01:00:5e'}", "network.mac_prefix", "unicast"),
    ("network: {mac_prefix: 525400}", "network.mac_prefix", "three hex octets"),
])
def test_bad_values_name_the_key(pool_dir: Path, text: str, key: str, reason: str) -> None:
    problems = problems_of(f"image_pool: {pool_dir}\n{text}\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{key}: ")
    assert reason in problems[0]


def test_image_pool_must_exist(tmp_path: Path) -> None:
    problems = problems_of(f"image_pool: {tmp_path / 'nope'}\n")
    assert problems == [f"image_pool: directory {tmp_path / 'nope'} does not exist"]


def test_paths_are_normalized(pool_dir: Path) -> None:
    cfg = config_mod.parse(f"image_pool: {pool_dir}/./\nstate_dir: /var//lib/x/../jobs\n")
    assert cfg.image_pool == str(pool_dir)
    assert cfg.state_dir == "/var/lib/jobs"


def test_mac_prefix_is_lowercased(pool_dir: Path) -> None:
    cfg = config_mod.parse(f"image_pool: {pool_dir}\nnetwork: {{mac_prefix: '52:AB:CD'}}\n")
    assert cfg.network.mac_prefix == "52:ab:cd"


def test_sizes_and_words(pool_dir: Path) -> None:
    cfg = config_mod.parse(f"""\
image_pool: {pool_dir}
min_free_space: 0
defaults: {{ram: 2048, vcpu_pinning: enabled, vrdma: "no", disk: 10G}}
""")
    assert cfg.min_free_space == 0
    assert cfg.defaults.ram == 2048          # bare YAML integer = MiB
    assert cfg.defaults.vcpu_pinning is True
    assert cfg.defaults.vrdma is False
    assert cfg.defaults.disk == 10240


def test_null_section_means_defaults(pool_dir: Path) -> None:
    cfg = config_mod.parse(f"image_pool: {pool_dir}\nlimits:\n")
    assert cfg.limits.vcpus == 64


def test_section_refuses_unknown_attribute(cfg) -> None:
    with pytest.raises(AttributeError):
        _ = cfg.limits.nonsense


@pytest.mark.parametrize("text, expected", [
    ("defaults: {vcpus: 8}\nlimits: {vcpus: 4}", ["defaults.vcpus: exceeds limits.vcpus"]),
    ("defaults: {ram: 8G}\nlimits: {ram: 4G}", ["defaults.ram: exceeds limits.ram"]),
    ("defaults: {vms_per_node: 9}", ["defaults.vms_per_node: exceeds limits.vms_per_node"]),
    ("defaults: {disk: 200G}", ["defaults.disk: exceeds limits.disk"]),
    ("limits: {min_ram: 8G, ram: 4G}\ndefaults: {ram: 2G}",
     ["limits.min_ram: must not exceed limits.ram", "defaults.ram: is below limits.min_ram"]),
    ("defaults: {ram: 32M}", ["defaults.ram: is below limits.min_ram"]),
    ("defaults: {vcpus: 8, vms_per_node: 9}\nlimits: {vcpus: 4}",
     ["defaults.vcpus: exceeds limits.vcpus",
      "defaults.vms_per_node: exceeds limits.vms_per_node"]),
])
def test_defaults_above_limits(pool_dir: Path, text: str, expected: list[str]) -> None:
    assert problems_of(f"image_pool: {pool_dir}\n{text}\n") == expected


def test_defaults_at_limits_are_fine(pool_dir: Path) -> None:
    cfg = config_mod.parse(f"image_pool: {pool_dir}\ndefaults: {{vcpus: 4, ram: 64M}}\n"
                           "limits: {vcpus: 4, min_ram: 64M}\n")
    assert (cfg.defaults.vcpus, cfg.defaults.ram) == (4, 64)


@pytest.mark.parametrize("text, reason", [
    ("a: [1\n", "not valid YAML at line 2"),
    ("a: b: c\n", "not valid YAML at line 1"),
    ("- a\n- b\n", "expected a mapping of keys at the top level"),
    ("just a string\n", "expected a mapping of keys at the top level"),
])
def test_not_yaml(text: str, reason: str) -> None:
    assert problems_of(text) == [reason]


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert info.value.problems == ["file not found"]
    assert str(info.value) == f"config {path}: file not found"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(tmp_path))  # a directory
    assert info.value.problems[0].endswith("is not a regular file")


def test_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(path))
    assert info.value.problems == ["not UTF-8 text"]


def test_resolve_path_precedence() -> None:
    env = {config_mod.ENV_VAR: "/from/env.yaml"}
    assert config_mod.resolve_path("/explicit.yaml", env) == "/explicit.yaml"
    assert config_mod.resolve_path(None, env) == "/from/env.yaml"
    assert config_mod.resolve_path(None, {}) == config_mod.DEFAULT_PATH
    assert config_mod.resolve_path("", {config_mod.ENV_VAR: ""}) == config_mod.DEFAULT_PATH
    assert config_mod.DEFAULT_PATH == "/etc/vtorque/vtorque.yaml"


def test_resolve_path_reads_the_process_environment(monkeypatch) -> None:
    monkeypatch.setenv(config_mod.ENV_VAR, "/env/vtorque.yaml")
    assert config_mod.resolve_path() == "/env/vtorque.yaml"
    assert config_mod.resolve_path("/cli.yaml") == "/cli.yaml"
    monkeypatch.delenv(config_mod.ENV_VAR)
    assert config_mod.resolve_path() == config_mod.DEFAULT_PATH


def test_load_uses_the_environment(monkeypatch, tmp_path: Path, pool_dir: Path) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(f"image_pool: {pool_dir}\nhypervisor: qemu\n")
    monkeypatch.setenv(config_mod.ENV_VAR, str(path))
    assert config_mod.load().hypervisor == "qemu"


# --- vtorque config check -----------------------------------------------------------------

def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vtorque.yaml"
    path.write_text(text)
    return str(path)


def _site(tmp_path: Path, pool_dir: Path) -> str:
    """A config whose every path is in place and root's: what config check accepts."""
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    return (f"image_pool: {pool_dir}\nsecret_file: {secret}\n"
            f"state_dir: {tmp_path / 'state'}\nramdisk_dir: {tmp_path / 'ramdisk'}\n"
            f"log_file: {tmp_path / 'log' / 'vtorque.log'}\n")


@pytest.mark.parametrize("where", ["after", "before"])
def test_cli_config_check_ok(capsys, tmp_path: Path, pool_dir: Path, where: str) -> None:
    path = _write(tmp_path, _site(tmp_path, pool_dir))
    argv = (["config", "check", "--config", path] if where == "after"
            else ["--config", path, "config", "check"])
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "ok\n"
    assert err == ""


def test_cli_config_check_reports_a_path_the_hooks_would_refuse(capsys, tmp_path: Path,
                                                                pool_dir: Path) -> None:
    """A config that loads is not enough: a missing secret fails every VM job later."""
    text = _site(tmp_path, pool_dir)
    (tmp_path / "secret").unlink()
    path = _write(tmp_path, text)
    assert cli.main(["config", "check", "--config", path]) == 1
    out = capsys.readouterr().out
    assert "secret_file" in out and "ok" not in out.split()


def test_cli_config_check_lists_every_problem(capsys, tmp_path: Path, pool_dir: Path) -> None:
    path = _write(tmp_path, f"image_pool: {pool_dir}\nbogus: 1\nlimits: {{vcpus: 0}}\n"
                  "network: {mode: wifi}\n")
    assert cli.main(["config", "check", "--config", path]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"bogus", "limits.vcpus",
                                                       "network.mode"}
    assert "Traceback" not in out + err


@pytest.mark.parametrize("content, problem", [
    (None, "file not found"),
    ("a: [1\n", "not valid YAML at line 2"),
    (b"\xff\xfe\x00", "not UTF-8 text"),
])
def test_cli_config_check_broken_file(capsys, tmp_path: Path, content, problem: str) -> None:
    path = tmp_path / "vtorque.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert cli.main(["config", "check", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == f"{path}: {problem}\n"
    assert "Traceback" not in err


def test_cli_config_check_uses_environment(capsys, monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    monkeypatch.setenv(config_mod.ENV_VAR, str(path))
    assert cli.main(["config", "check"]) == 1
    out, _err = capsys.readouterr()
    assert out == f"{path}: file not found\n"


def test_cli_config_option_beats_environment(capsys, monkeypatch, tmp_path: Path,
                                             pool_dir: Path) -> None:
    monkeypatch.setenv(config_mod.ENV_VAR, str(tmp_path / "absent.yaml"))
    path = _write(tmp_path, _site(tmp_path, pool_dir))
    assert cli.main(["config", "check", "--config", path]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_cli_other_commands_report_config_errors_in_one_line(capsys, tmp_path: Path) -> None:
    path = _write(tmp_path, f"image_pool: {tmp_path}\nbogus: 1\nlimits: {{vcpus: 0}}\n")
    assert cli.main(["--config", path, "vm", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"vtorque: config {path}: bogus: unknown key (and 1 more)\n"


# --- the cache of the parsed YAML (config/cache.py) ------------------------------------------

def _cached(tmp_path: Path, pool_dir: Path, extra: str = "") -> Path:
    path = tmp_path / "cached.yaml"
    path.write_text(f"image_pool: {pool_dir}\nhypervisor: qemu\n{extra}")
    return path


def test_a_trusted_load_keeps_the_parsed_yaml_root_only_beside_the_file(
        tmp_path: Path, pool_dir: Path) -> None:
    from vtorque.config import cache
    path = _cached(tmp_path, pool_dir)
    first = config_mod.load(str(path), trusted=True)
    stored = Path(cache.cache_path(str(path)))
    assert stored == tmp_path / ".cached.yaml.cache"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert config_mod.load(str(path), trusted=True) == first
    # A load as a user (vsub) neither reads nor writes it.
    stored.unlink()
    assert config_mod.load(str(path), trusted=False) == first
    assert not stored.exists()


def test_a_load_the_cache_answers_does_not_import_yaml(tmp_path: Path, pool_dir: Path) -> None:
    import subprocess
    import sys
    path = _cached(tmp_path, pool_dir)
    config_mod.load(str(path), trusted=True)
    probe = ("import sys; from vtorque import config; c = config.load(sys.argv[1], "
             "trusted=True); print(c.hypervisor, 'yaml' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                          text=True, timeout=60, cwd=root)
    assert done.stdout.split() == ["qemu", "False"], done.stderr
    Path(config_mod.cache.cache_path(str(path))).unlink()
    done = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                          text=True, timeout=60, cwd=root)
    assert done.stdout.split() == ["qemu", "True"], done.stderr


def test_an_edit_that_keeps_size_and_times_is_seen(tmp_path: Path, pool_dir: Path) -> None:
    """Timestamps tick coarsely: the cache is used only for the very same bytes."""
    path = _cached(tmp_path, pool_dir, "defaults: {vcpus: 2}\n")
    assert config_mod.load(str(path), trusted=True).defaults.vcpus == 2
    before = path.stat()
    with open(path, "r+b") as handle:        # same inode, same size
        data = handle.read().replace(b"vcpus: 2", b"vcpus: 4")
        handle.seek(0)
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert config_mod.load(str(path), trusted=True).defaults.vcpus == 4


def test_the_cache_does_not_skip_the_checks_of_the_file_system(
        tmp_path: Path, pool_dir: Path) -> None:
    path = _cached(tmp_path, pool_dir)
    config_mod.load(str(path), trusted=True)
    os.rmdir(pool_dir)
    with pytest.raises(ConfigError, match="image_pool: directory .* does not exist"):
        config_mod.load(str(path), trusted=True)


def test_the_cache_does_not_skip_the_trust_checks(tmp_path: Path, pool_dir: Path) -> None:
    path = _cached(tmp_path, pool_dir)
    config_mod.load(str(path), trusted=True)
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError, match="not trusted: .* writable by group or others"):
        config_mod.load(str(path), trusted=True)
    os.chmod(path, 0o644)
    os.chmod(tmp_path, 0o777)
    try:
        with pytest.raises(ConfigError, match="not trusted"):
            config_mod.load(str(path), trusted=True)
    finally:
        os.chmod(tmp_path, 0o700)


@pytest.mark.parametrize("damage", ["corrupt", "other text", "foreign", "writable", "link",
                                    "other path", "not plain"])
def test_a_cache_that_is_not_exactly_ours_is_not_used(tmp_path: Path, pool_dir: Path,
                                                       damage: str) -> None:
    import json
    from vtorque.config import cache
    path = _cached(tmp_path, pool_dir)
    config_mod.load(str(path), trusted=True)
    stored = Path(cache.cache_path(str(path)))
    data = json.loads(stored.read_text())
    data["raw"]["hypervisor"] = "kvm"             # what a stale or forged cache would say
    if damage == "corrupt":
        stored.write_text("{not json")
    elif damage == "other text":
        data["text"] += "# another file\n"
    elif damage == "other path":
        data["path"] = "/etc/vtorque/other.yaml"
    elif damage == "not plain":
        data["raw"]["defaults"] = {"vcpus": float("nan")}
    if damage != "corrupt":
        stored.write_text(json.dumps(data))
    if damage == "foreign":
        os.chown(stored, 4321, 4321)
    elif damage == "writable":
        os.chmod(stored, 0o622)
    elif damage == "link":
        target = tmp_path / "elsewhere.json"
        target.write_text(json.dumps(dict(data, text=path.read_text())))
        stored.unlink()
        stored.symlink_to(target)
    assert config_mod.load(str(path), trusted=True).hypervisor == "qemu"


def test_values_json_cannot_carry_are_never_cached(tmp_path: Path, pool_dir: Path) -> None:
    from vtorque.config import cache
    assert cache.plain({"a": [1, 2.5, None, True, "x", {"b": []}]})
    for value in ({1: "int key"}, {"d": __import__("datetime").date(2024, 1, 1)},
                  {"b": b"bytes"}, {"s": {1, 2}}, {"f": float("inf")}, (1, 2)):
        assert not cache.plain(value)
    path = tmp_path / "dated.yaml"
    path.write_text(f"image_pool: {pool_dir}\nnode_name: !!binary aGVsbG8=\n")
    with pytest.raises(ConfigError):
        config_mod.load(str(path), trusted=True)
    assert not Path(cache.cache_path(str(path))).exists()


def test_an_invalid_file_leaves_no_cache(tmp_path: Path, pool_dir: Path) -> None:
    from vtorque.config import cache
    path = _cached(tmp_path, pool_dir, "hypervisor_typo: 1\n")
    with pytest.raises(ConfigError, match="unknown key"):
        config_mod.load(str(path), trusted=True)
    assert not Path(cache.cache_path(str(path))).exists()


def test_a_directory_that_refuses_the_cache_only_loses_it(tmp_path: Path,
                                                           pool_dir: Path) -> None:
    from vtorque.config import cache
    path = _cached(tmp_path, pool_dir)
    os.mkdir(cache.cache_path(str(path)))          # something in its place
    assert config_mod.load(str(path), trusted=True).hypervisor == "qemu"
    assert config_mod.load(str(path), trusted=True).hypervisor == "qemu"
