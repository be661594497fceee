"""Value parsers shared by the config file and the -vm request (a leaf module)."""

from __future__ import annotations

import re

# The B/iB suffix only after a unit letter: "512B" means bytes, not 512 MiB, so it is refused.
# re.ASCII: without it IGNORECASE lets characters that fold onto ASCII letters through
# (the Kelvin sign U+212A matches "k", a dotless i matches "i") into the unit lookup.
_SIZE = re.compile(r"(?P<num>[0-9]{1,24})(?:(?P<unit>[KMGT])(?:I?B)?)?",
                   re.IGNORECASE | re.ASCII)
_BLANKS = " \t"
_SHIFT = {"K": 10, "M": 20, "G": 30, "T": 40}

TRUE_WORDS = frozenset({"yes", "true", "enabled", "on", "1"})
FALSE_WORDS = frozenset({"no", "false", "disabled", "off", "0"})


def parse_size_mib(text: str) -> int:
    """'512M', '2G', '1048576K', '1T' -> MiB (binary units, as vTorque and qsub use them).

    A bare number means MiB. Sizes that are not a whole number of MiB are refused rather
    than silently rounded. Raises ValueError with a short reason.
    """
    match = _SIZE.fullmatch(text.strip(_BLANKS)) if isinstance(text, str) else None
    if not match:
        raise ValueError("expected a size such as 512M, 4G or 1T")
    num = int(match["num"])
    unit = (match["unit"] or "M").upper()
    size_bytes = num << _SHIFT[unit]
    if size_bytes % (1 << 20):
        raise ValueError("size must be a whole number of MiB")
    return size_bytes >> 20


def parse_bool(text: str) -> bool:
    """yes/no, true/false, enabled/disabled (vTorque's words), on/off, 1/0."""
    word = text.strip(_BLANKS).lower() if isinstance(text, str) and text.isascii() else ""
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("expected yes or no (also true/false, enabled/disabled)")


def format_mib(mib: int) -> str:
    """MiB -> the shortest exact text ('2G', '512M')."""
    for unit, shift in (("T", 20), ("G", 10)):
        if mib and mib % (1 << shift) == 0:
            return f"{mib >> shift}{unit}"
    return f"{mib}M"


# Sizes as the batch servers print them (their records, not a user's text): ASCII only.
# Torque and PBS: a number of bytes, or with kb/mb/gb/tb/pb (binary), or words (w: 8 bytes).
# Slurm: MiB, or with K/M/G/T/P (binary; K rounds down). Compiled on first use (re's own
# cache): vsub and most hooks never read a record's sizes.
_PBS_SIZE = r"([0-9]{1,20})(?:([kmgtp])?([bw]))?"
_SLURM_SIZE = r"([0-9]{1,20})([KMGTP])?"
_RECORD_FLAGS = re.IGNORECASE | re.ASCII
_PBS_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_pbs_size_bytes(text: str) -> int:
    """'4gb', '512mb', '1048576kb', '100' (bytes), '2mw' (words) -> bytes; ValueError."""
    match = (re.fullmatch(_PBS_SIZE, text.strip(_BLANKS), _RECORD_FLAGS)
             if isinstance(text, str) else None)
    if not match:
        raise ValueError("expected a size such as 4gb, 512mb or 1048576kb")
    number = int(match[1]) << _PBS_SHIFT[(match[2] or "").lower()]
    return number * 8 if (match[3] or "").lower() == "w" else number


def parse_slurm_size_mib(text: str) -> int:
    """'1000' (MiB), '1000M', '4G', '2048K' -> MiB (rounded down); ValueError."""
    match = (re.fullmatch(_SLURM_SIZE, text.strip(_BLANKS), _RECORD_FLAGS)
             if isinstance(text, str) else None)
    if not match:
        raise ValueError("expected a size such as 1000, 1000M or 4G")
    shift = {"": 20, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50}[(match[2] or "").upper()]
    return (int(match[1]) << shift) >> 20


# Huge page sizes a guest's RAM may come from (x86_64: 2 MiB, and 1 GiB where the CPU has
# pdpe1gb), in MiB. `yes` means 2 MiB: every x86_64 kernel has that pool.
HUGEPAGE_SIZES_MIB = (2, 1024)


def parse_hugepages(text: str) -> int:
    """'yes', 'no', '2M', '1G' (and the other yes/no words) -> page size in MiB, 0 = off."""
    try:
        return HUGEPAGE_SIZES_MIB[0] if parse_bool(text) else 0
    except ValueError:
        pass
    try:
        mib = parse_size_mib(text)
    except ValueError:
        mib = 0
    if mib not in HUGEPAGE_SIZES_MIB:
        raise ValueError("expected yes, no or a huge page size: 2M or 1G")
    return mib


def format_hugepages(mib: int) -> str:
    """Page size in MiB (0 = off) -> 'no', '2M', '1G'."""
    return format_mib(mib) if mib else "no"
