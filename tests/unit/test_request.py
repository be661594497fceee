"""Unit tests of vtorque.request: the -vm request (faults items 13, 14 and 15's submit side).

Every refusal must be one line naming the key, and the error's `key` attribute must be set,
so vsub and the hooks can tell the user exactly what to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtorque.errors import ImageError, RequestError
from vtorque.request import (
    VM_KEYS,
    VmRequest,
    build_request,
    check_fits_node,
    check_image_matches,
    decode_pairs,
    encode_pairs,
    image_name,
    parse_request,
    split_pairs,
)
from vtorque.units import FALSE_WORDS, TRUE_WORDS, format_mib

PROPERTY = settings(database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def refused(texts, config, key: str | None, *fragments: str) -> RequestError:
    """Assert that parsing refuses with one line naming `key` (and each fragment)."""
    with pytest.raises(RequestError) as info:
        parse_request(texts, config)
    message = str(info.value)
    assert "\n" not in message
    if key is not None:
        assert info.value.key == key
        assert re.search(rf"(?<![A-Za-z_]){re.escape(key)}(?![A-Za-z_])", message), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# --- split_pairs ---------------------------------------------------------------------------

def test_split_pairs_basic() -> None:
    assert split_pairs(["img=deb12, vcpus = 2", "ram=2G"]) == {
        "img": "deb12", "vcpus": "2", "ram": "2G"}


def test_unknown_key_suggests_the_closest(cfg) -> None:
    error = refused("vcpu=2", cfg, "vcpu", "unknown -vm key 'vcpu'", "did you mean 'vcpus'?")
    for key in VM_KEYS:
        assert key in str(error)  # the known keys are listed


def test_misspelled_key_suggestion(cfg) -> None:
    refused("vms_per_nodes=2", cfg, "vms_per_nodes", "did you mean 'vms_per_node'?")
    refused("vrmda=yes", cfg, "vrmda", "did you mean 'vrdma'?")


def test_unknown_key_without_suggestion(cfg) -> None:
    error = refused("qqqq=1", cfg, "qqqq", "unknown -vm key 'qqqq'")
    assert "did you mean" not in str(error)


def test_duplicate_key(cfg) -> None:
    refused("vcpus=2,vcpus=2", cfg, "vcpus", "given more than once")


def test_duplicate_key_across_two_texts(cfg) -> None:
    refused(["vcpus=2,ram=1G", "img=x,vcpus=4"], cfg, "vcpus", "given more than once")


@pytest.mark.parametrize("text", ["img=", "img= ", "vcpus=2,img="])
def test_empty_value(cfg, text: str) -> None:
    refused(text, cfg, "img", "empty value")


def test_value_with_equals(cfg) -> None:
    refused("vm_prologue=/a=b", cfg, "vm_prologue", "must not contain '='")


@pytest.mark.parametrize("text, key", [("img=-rf", "img"), ("vcpus=-1", "vcpus"),
                                       ("vm_prologue=--help", "vm_prologue")])
def test_value_with_leading_dash(cfg, text: str, key: str) -> None:
    refused(text, cfg, key, "must not start with '-'")


def test_value_with_comma_is_a_malformed_item(cfg) -> None:
    refused("vm_prologue=/a,b", cfg, None, "malformed -vm item 'b'", "cannot contain ','")


@pytest.mark.parametrize("text", ["vcpus", "vcpus=2,", "vcpus=2,,ram=1G"])
def test_malformed_items(cfg, text: str) -> None:
    refused(text, cfg, None, "malformed -vm item")


@pytest.mark.parametrize("texts", ["", "   ", ["vcpus=1", ""]])
def test_empty_request(cfg, texts) -> None:
    refused(texts, cfg, None, "empty -vm request")


# --- numbers -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, fragment", [
    ("0", "below the minimum 1"),
    ("abc", "not a whole number"),
    ("1.5", "not a whole number"),
    ("2k", "not a whole number"),
    ("+2", "not a whole number"),
    ("65", "exceeds the site limit 64 (limits.vcpus)"),
    ("1000000", "exceeds the site limit 64 (limits.vcpus)"),
    ("9" * 5000, "exceeds the site limit 64 (limits.vcpus)"),
])
def test_vcpus_refused(cfg, value: str, fragment: str) -> None:
    error = refused(f"vcpus={value}", cfg, "vcpus", fragment)
    assert len(str(error)) < 300


def test_vcpus_negative(cfg) -> None:
    refused("vcpus=-1", cfg, "vcpus")


def test_vcpus_limit_comes_from_the_config(make_config) -> None:
    cfg = make_config({"limits": {"vcpus": 4}})
    assert parse_request("vcpus=4", cfg).vcpus == 4
    refused("vcpus=5", cfg, "vcpus", "limit 4 (limits.vcpus)")


@pytest.mark.parametrize("value, vcpus", [("1", 1), ("64", 64), ("007", 7)])
def test_vcpus_accepted(cfg, value: str, vcpus: int) -> None:
    assert parse_request(f"vcpus={value}", cfg).vcpus == vcpus


@pytest.mark.parametrize("value, fragment", [
    ("0", "below the minimum 64M"),
    ("32M", "below the minimum 64M"),
    ("257G", "exceeds the site limit 256G (limits.ram)"),
    ("1T", "exceeds the site limit 256G (limits.ram)"),
    ("4X", "expected a size"),
    ("1.5G", "expected a size"),
    ("512B", "expected a size"),
    ("1000K", "whole number of MiB"),
])
def test_ram_refused(cfg, value: str, fragment: str) -> None:
    refused(f"ram={value}", cfg, "ram", fragment)


@pytest.mark.parametrize("value, mib", [("64M", 64), ("2G", 2048), ("2048", 2048),
                                        ("256G", 256 << 10), ("1048576K", 1024)])
def test_ram_accepted(cfg, value: str, mib: int) -> None:
    assert parse_request(f"ram={value}", cfg).ram_mib == mib


def test_ram_limit_comes_from_the_config(make_config) -> None:
    cfg = make_config({"limits": {"ram": "2G"}})
    refused("ram=3G", cfg, "ram", "limit 2G (limits.ram)")


def test_vms_per_node_limit(cfg) -> None:
    assert parse_request("vms_per_node=8", cfg).vms_per_node == 8
    refused("vms_per_node=9", cfg, "vms_per_node",
            "exceeds the site limit 8 (limits.vms_per_node)")
    refused("vms_per_node=0", cfg, "vms_per_node", "below the minimum 1")


@pytest.mark.parametrize("value, mib", [("0", 0), ("0G", 0), ("1G", 1024), ("100G", 102400)])
def test_disk_accepted(cfg, value: str, mib: int) -> None:
    assert parse_request(f"disk={value}", cfg).disk_mib == mib


@pytest.mark.parametrize("value, fragment", [("101G", "limit 100G (limits.disk)"),
                                             ("512K", "whole number of MiB"),
                                             ("big", "expected a size")])
def test_disk_refused(cfg, value: str, fragment: str) -> None:
    refused(f"disk={value}", cfg, "disk", fragment)


# --- names and paths -----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["img", "distro"])
@pytest.mark.parametrize("value", ["../etc/passwd", "..", "a..b", "/var/lib/images/x.qcow2",
                                   "sub/x", "http://evil.example/x.qcow2",
                                   "file:///etc/shadow", "a b", "x" * 65, ".hidden",
                                   "$(id)", "a;b", "a<b>"])
def test_image_names_refuse_paths_and_urls(cfg, key: str, value: str) -> None:
    refused(f"{key}={value}", cfg, key, "not a catalog name")


@pytest.mark.parametrize("value", ["debian12", "Rocky-9.3", "osv_base", "x" * 64])
def test_image_names_accepted(cfg, value: str) -> None:
    assert parse_request(f"img={value}", cfg).img == value
    assert parse_request(f"distro={value}", cfg).distro == value


@pytest.mark.parametrize("key", ["vm_prologue", "vm_epilogue"])
@pytest.mark.parametrize("value", ["/home/user/pre.sh", "/opt/x/run+1.sh", "/a", "/a/b/c",
                                   "/a/..b", "/a/.x"])
def test_guest_paths_accepted(cfg, key: str, value: str) -> None:
    assert getattr(parse_request(f"{key}={value}", cfg), key) == value


@pytest.mark.parametrize("key", ["vm_prologue", "vm_epilogue"])
@pytest.mark.parametrize("value", ["pre.sh", "./pre.sh", "/", "/a/../etc/shadow", "/a/..",
                                   "//etc/x", "/a//b", "/a b", "/a;reboot", "/$(id)",
                                   "/a`id`", "/" + "a" * 256, "~/pre.sh"])
def test_guest_paths_refused(cfg, key: str, value: str) -> None:
    refused(f"{key}={value}", cfg, key, "absolute path inside the guest")


# --- words ---------------------------------------------------------------------------------

@pytest.mark.parametrize("word", sorted(TRUE_WORDS))
def test_booleans_true(cfg, word: str) -> None:
    request = parse_request(f"vcpu_pinning={word},vrdma={word}", cfg)
    assert request.vcpu_pinning is True and request.vrdma is True


@pytest.mark.parametrize("word", sorted(FALSE_WORDS))
def test_booleans_false(make_config, word: str) -> None:
    cfg = make_config({"defaults": {"vcpu_pinning": True, "vrdma": True}})
    request = parse_request(f"vcpu_pinning={word},vrdma={word}", cfg)
    assert request.vcpu_pinning is False and request.vrdma is False


@pytest.mark.parametrize("key", ["vcpu_pinning", "vrdma"])
def test_boolean_refused(cfg, key: str) -> None:
    refused(f"{key}=maybe", cfg, key, "expected yes or no")


@pytest.mark.parametrize("value", ["/home/u/pinning.txt", "/etc/shadow"])
def test_vcpu_pinning_file_refused(cfg, value: str) -> None:
    refused(f"vcpu_pinning={value}", cfg, "vcpu_pinning", "pinning files are not supported")


def test_arch_and_fs_type(cfg) -> None:
    assert parse_request("arch=x86_64,fs_type=ramdisk", cfg).fs_type == "ramdisk"
    refused("arch=aarch64", cfg, "arch", "expected one of x86_64")
    refused("fs_type=nfs", cfg, "fs_type", "expected one of sharedfs, ramdisk")


# --- defaults and canonical text -----------------------------------------------------------

def test_site_defaults_fill_missing_keys(make_config) -> None:
    cfg = make_config({"defaults": {"img": "deb12", "distro": "debian", "vcpus": 2,
                                    "ram": "2G", "vms_per_node": 2, "vcpu_pinning": "yes",
                                    "disk": "1G", "vrdma": True, "fs_type": "ramdisk"}})
    assert parse_request("vcpus=4", cfg) == VmRequest(
        img="deb12", distro="debian", arch="x86_64", vcpus=4, ram_mib=2048, vms_per_node=2,
        vcpu_pinning=True, disk_mib=1024, vm_prologue=None, vm_epilogue=None, vrdma=True,
        fs_type="ramdisk")


def test_default_request(cfg) -> None:
    assert parse_request("img=deb12", cfg) == VmRequest(
        img="deb12", distro=None, arch="x86_64", vcpus=1, ram_mib=1024, vms_per_node=1,
        vcpu_pinning=False, disk_mib=0, vm_prologue=None, vm_epilogue=None, vrdma=False,
        fs_type="sharedfs")


def test_to_text_is_canonical(make_config) -> None:
    cfg = make_config({"limits": {"disk": "1T"}})
    request = parse_request(["vrdma=enabled,ram=2048,img=deb12", "vm_prologue=/p.sh,disk=1T"],
                            cfg)
    assert request.to_text() == ("img=deb12,arch=x86_64,vcpus=1,ram=2G,vms_per_node=1,"
                                 "vcpu_pinning=no,disk=1T,vm_prologue=/p.sh,vrdma=yes,"
                                 "fs_type=sharedfs,hugepages=no")


def test_to_text_without_disk_or_image(cfg) -> None:
    text = parse_request("vcpus=2", cfg).to_text()
    assert text == ("arch=x86_64,vcpus=2,ram=1G,vms_per_node=1,vcpu_pinning=no,disk=0,"
                    "vrdma=no,fs_type=sharedfs,hugepages=no")
    assert parse_request(text, cfg) == parse_request("vcpus=2", cfg)


_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True).filter(
    lambda s: ".." not in s)
_COMPONENT = st.from_regex(r"[A-Za-z0-9._+-]{1,20}", fullmatch=True).filter(
    lambda s: s != "..")
_GUEST_PATH = st.lists(_COMPONENT, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(
    parts)).filter(lambda p: len(p) <= 256)


@st.composite
def _size_text(draw, lo: int, hi: int, zero: bool = False) -> str:
    mib = 0 if zero and draw(st.booleans()) else draw(st.integers(lo, hi))
    forms = [f"{mib}", f"{mib}M", f"{mib}MiB", f"{mib * 1024}K", format_mib(mib)]
    if mib % 1024 == 0:
        forms.append(f"{mib // 1024}g")
    return draw(st.sampled_from(forms))


_PAIRS = st.fixed_dictionaries({}, optional={
    "img": _NAME,
    "distro": _NAME,
    "arch": st.just("x86_64"),
    "vcpus": st.integers(1, 64).map(str),
    "ram": _size_text(64, 256 << 10),
    "vms_per_node": st.integers(1, 8).map(str),
    "vcpu_pinning": st.sampled_from(sorted(TRUE_WORDS | FALSE_WORDS)),
    "disk": _size_text(1, 100 << 10, zero=True),
    "vm_prologue": _GUEST_PATH,
    "vm_epilogue": _GUEST_PATH,
    "vrdma": st.sampled_from(sorted(TRUE_WORDS | FALSE_WORDS)),
    "fs_type": st.sampled_from(["sharedfs", "ramdisk"]),
}).filter(bool)


@PROPERTY
@given(pairs=_PAIRS, split=st.integers(min_value=0, max_value=12))
def test_to_text_round_trips(cfg, pairs: dict[str, str], split: int) -> None:
    items = [f"{k}={v}" for k, v in pairs.items()]
    split = min(split, len(items) - 1) if len(items) > 1 else 0
    texts = [",".join(items[:split]), ",".join(items[split:])] if split else [",".join(items)]
    request = parse_request(texts, cfg)
    text = request.to_text()
    again = parse_request(text, cfg)
    assert again == request
    assert again.to_text() == text


@PROPERTY
@given(key=st.text(min_size=1, max_size=12).filter(
    lambda k: k.strip() and k.strip() not in VM_KEYS and "," not in k and "=" not in k))
def test_any_unknown_key_is_refused_and_named(cfg, key: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(f"{key}=1", cfg)
    assert info.value.key == key.strip()
    assert "unknown -vm key" in str(info.value)


# --- node fit ------------------------------------------------------------------------------

def test_check_fits_node(make_config) -> None:
    cfg = make_config({"host_reserve": {"cores": 2, "memory": "1G"}})
    request = parse_request("vcpus=3,ram=1G,vms_per_node=2", cfg)
    check_fits_node(request, cores=8, memory_mib=3072, config=cfg)  # 6 of 6, 2G of 2G
    with pytest.raises(RequestError) as info:
        check_fits_node(request, cores=7, memory_mib=1 << 20, config=cfg)
    assert info.value.key == "vcpus"
    assert "needs 6 cores; this node offers 5 (7 minus host_reserve.cores=2)" in \
        str(info.value)
    with pytest.raises(RequestError) as info:
        check_fits_node(request, cores=64, memory_mib=3071, config=cfg)
    assert info.value.key == "ram"
    assert "ram=1G x vms_per_node=2 needs 2G" in str(info.value)
    assert "host_reserve.memory" in str(info.value)


def test_check_fits_node_tiny_node(cfg) -> None:
    request = parse_request("vcpus=1,ram=64M", cfg)
    with pytest.raises(RequestError, match="offers 0 "):
        check_fits_node(request, cores=1, memory_mib=1 << 20, config=cfg)
    with pytest.raises(RequestError, match="offers 0M"):
        check_fits_node(request, cores=4, memory_mib=512, config=cfg)


# --- image choice --------------------------------------------------------------------------

class FakeCatalog:
    def __init__(self, by_distro: dict[str, list[str]]):
        self.by_distro = by_distro
        self.asked: list[str] = []

    def names_for_distro(self, distro: str) -> list[str]:
        self.asked.append(distro)
        return self.by_distro.get(distro, [])


@dataclass(frozen=True)
class FakeImage:
    name: str
    distro: str
    arch: str = "x86_64"
    kind: str = "linux"


def test_image_name_prefers_img(cfg) -> None:
    catalog = FakeCatalog({"debian": ["deb11", "deb12"]})
    assert image_name(parse_request("img=mine,distro=debian", cfg), catalog) == "mine"
    assert catalog.asked == []


def test_image_name_by_distro(cfg) -> None:
    catalog = FakeCatalog({"debian": ["deb11", "deb12"]})
    assert image_name(parse_request("distro=debian", cfg), catalog) == "deb11"
    with pytest.raises(ImageError, match="no authorized image for distro 'rocky'"):
        image_name(parse_request("distro=rocky", cfg), catalog)


def test_image_name_none_given(cfg) -> None:
    with pytest.raises(ImageError, match="defaults.img"):
        image_name(parse_request("vcpus=1", cfg), FakeCatalog({}))


def test_image_name_site_default(make_config) -> None:
    cfg = make_config({"defaults": {"img": "site-image"}})
    assert image_name(parse_request("vcpus=1", cfg), FakeCatalog({})) == "site-image"


def test_check_image_matches(cfg) -> None:
    check_image_matches(parse_request("img=deb12", cfg), FakeImage("deb12", "debian"), cfg)
    check_image_matches(parse_request("img=deb12,distro=debian", cfg),
                        FakeImage("deb12", "debian"), cfg)
    with pytest.raises(ImageError, match="distro 'debian', but the request asks for "
                                         "distro 'rocky'"):
        check_image_matches(parse_request("img=deb12,distro=rocky", cfg),
                            FakeImage("deb12", "debian"), cfg)
    with pytest.raises(ImageError, match="arch 'aarch64', but the request asks for "
                                         "arch 'x86_64'"):
        check_image_matches(parse_request("img=deb12", cfg),
                            FakeImage("deb12", "debian", "aarch64"), cfg)


# --- the job variable between vsub and the root side ---------------------------------------

def test_encode_pairs_is_comma_free_and_ordered() -> None:
    assert encode_pairs({"vcpus": "2", "img": "deb12", "ram": "1G"}) == \
        "img=deb12;vcpus=2;ram=1G"


@PROPERTY
@given(pairs=_PAIRS)
def test_encode_decode_round_trip(cfg, pairs: dict[str, str]) -> None:
    text = encode_pairs(pairs)
    assert "," not in text
    assert decode_pairs(text) == pairs
    assert build_request(decode_pairs(text), cfg) == parse_request(
        ",".join(f"{k}={v}" for k, v in pairs.items()), cfg)


@pytest.mark.parametrize("text, fragment", [
    ("img=x;vcpu=2", "unknown -vm key 'vcpu'"),
    ("img=x;img=y", "given more than once"),
    ("img=x,vcpus=2;vcpus=3", "given more than once"),
    ("img=", "empty value"),
    ("img=-x", "must not start with '-'"),
])
def test_decode_pairs_trusts_nothing(text: str, fragment: str) -> None:
    with pytest.raises(RequestError, match=re.escape(fragment)):
        decode_pairs(text)
