"""Hostile and corrupt weights files, for testing that the weights reader refuses them cleanly.

Each file attacks one part of the reader: the zip directory of a `torch.save` archive, the
pickle in its `data.pkl` (depth, size, sharing, code execution, lying lengths), the tensor views
it describes, the storages, the safetensors header, and the ResNet checks after them. Every
file must be refused (exit status 1, a one-line message) without running anything, without
exhausting memory or time, and without a crash; none of them is a loadable ResNet.

    python3 tests/hostile_weights.py OUTDIR --marker MARKER_PATH

writes the files and OUTDIR/manifest.json: a list of {"file", "class", "what", "expect"}, where
`expect` holds lowercase alternatives, one of which the refusal should contain. The files that
try to run code would create MARKER_PATH if they ran. Output is the same on every run.

    python3 tests/hostile_weights.py --big-endian SRC.pth DST.pth

rewrites a real torch.save archive as a big-endian one (`byteorder` = `big`, every storage
byte-swapped per element), which must load to the same weights.

Standard library only; nothing written here is ever unpickled.
"""

import argparse
import array
import bz2
import json
import math
import pickletools
import random
import shlex
import struct
import sys
import zlib
from collections import namedtuple
from dataclasses import dataclass, replace
from pathlib import Path

SEED = 20261207
SERIAL_ID = b"0" * 40
DOS_TIME, DOS_DATE = 0, (1 << 5) | 1  # 1980-01-01 00:00, the earliest a zip can say

# ---------------------------------------------------------------------------------------------
# Pickle writer: each function returns the opcodes that push one value.


def p_int(v):
    if 0 <= v < 0x100:
        return b"K" + bytes([v])  # BININT1
    if 0 <= v < 0x10000:
        return b"M" + struct.pack("<H", v)  # BININT2
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)  # BININT
    n = v.bit_length() // 8 + 1  # LONG1, two's complement with room for the sign
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def p_str(s):
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def p_bytes(b):
    if len(b) < 256:
        return b"C" + bytes([len(b)]) + b  # SHORT_BINBYTES
    return b"B" + struct.pack("<I", len(b)) + b  # BINBYTES


def p_global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def p_stack_global(module, name):
    return p_str(module) + p_str(name) + b"\x93"  # STACK_GLOBAL (protocol 4)


def p_put(i):
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)  # (LONG_)BINPUT


def p_get(i):
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)  # (LONG_)BINGET


def p_tuple(*items):
    if not items:
        return b")"  # EMPTY_TUPLE
    if len(items) <= 3:
        return b"".join(items) + bytes([0x84 + len(items)])  # TUPLE1..3
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def p_list(*items):
    return b"]" + (b"(" + b"".join(items) + b"e" if items else b"")  # EMPTY_LIST, APPENDS


def p(x):
    """Plain Python values as opcodes; `bytes` are opcodes already written."""
    if isinstance(x, bytes):
        return x
    if x is None:
        return b"N"
    if isinstance(x, bool):
        return b"\x88" if x else b"\x89"
    if isinstance(x, int):
        return p_int(x)
    if isinstance(x, str):
        return p_str(x)
    if isinstance(x, tuple):
        return p_tuple(*map(p, x))
    if isinstance(x, list):
        return p_list(*map(p, x))
    raise TypeError(x)


def p_call(fn, *args):
    return fn + p_tuple(*map(p, args)) + b"R"  # REDUCE


def p_dict(pairs, ordered=True):
    """A dict filled with SETITEMS; the pairs may repeat a key."""
    out = p_call(p_global("collections", "OrderedDict")) if ordered else b"}"
    if pairs:
        out += b"(" + b"".join(p(k) + p(v) for k, v in pairs) + b"u"
    return out


def pickle_of(body, proto=2):
    return b"\x80" + bytes([proto]) + body + b"."  # PROTO ... STOP


def contiguous(size):
    stride, n = [], 1
    for d in reversed(size):
        stride.insert(0, n)
        n *= d
    return tuple(stride)


def p_tensor(key, size, stride=None, offset=0, numel=None, stype="FloatStorage"):
    """torch._utils._rebuild_tensor_v2 over the storage `data/<key>`, as torch.save writes it."""
    stride = contiguous(size) if stride is None else stride
    numel = math.prod(size) if numel is None else numel
    pid = p_tuple(*map(p, ("storage", p_global("torch", stype), key, "cpu", numel))) + b"Q"
    rebuild = p_global("torch._utils", "_rebuild_tensor_v2")
    return p_call(rebuild, pid, offset, tuple(size), tuple(stride), False, p_dict([]))


def state_dict(pairs):
    return pickle_of(p_dict(pairs))


def floats(*v):
    return struct.pack(f"<{len(v)}f", *v)


# ---------------------------------------------------------------------------------------------
# Zip writer: every header field can be made to lie.


@dataclass
class Entry:
    name: str
    data: bytes  # the bytes as they lie in the file (compressed when method != 0)
    method: int = 0
    flags: int = 0
    crc: int | None = None  # None: the CRC-32 of `data`
    size: int | None = None  # claimed uncompressed size; None: len(data)
    csize: int | None = None  # claimed compressed size; None: len(data)
    zip64: bool = False  # sizes in a zip64 extra field, 0xFFFFFFFF in the headers
    header_of: int | None = None  # share entry #n's local header instead of writing one
    inside: int | None = None  # local header already written at the start of entry #n's data


def _fields(e):
    crc = zlib.crc32(e.data) if e.crc is None else e.crc
    size = len(e.data) if e.size is None else e.size
    csize = len(e.data) if e.csize is None else e.csize
    return crc, size, csize


def local_header(e, extra=b""):
    crc, size, csize = _fields(e)
    name = e.name.encode("utf-8", "surrogatepass")
    if e.zip64:
        extra = struct.pack("<HHQQ", 1, 16, size, csize) + extra
        size = csize = 0xFFFFFFFF
    head = struct.pack(
        "<4sHHHHHIIIHH", b"PK\x03\x04", 45 if e.zip64 else 20, e.flags, e.method,
        DOS_TIME, DOS_DATE, crc, csize & 0xFFFFFFFF, size & 0xFFFFFFFF, len(name), len(extra))
    return head + name + extra


def central_header(e, at):
    crc, size, csize = _fields(e)
    name = e.name.encode("utf-8", "surrogatepass")
    extra = b""
    if e.zip64:
        extra = struct.pack("<HHQQ", 1, 16, size, csize)
        size = csize = 0xFFFFFFFF
    head = struct.pack(
        "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 45 if e.zip64 else 20, e.flags, e.method,
        DOS_TIME, DOS_DATE, crc, csize & 0xFFFFFFFF, size & 0xFFFFFFFF, len(name), len(extra),
        0, 0, 0, 0, at)
    return head + name + extra


def zip_bytes(entries, eocd=True, count=None, cd_offset=None, cd_size=None, zip64_count=None):
    """A zip of `entries`, each entry's data aligned to 64 bytes as torch.save aligns storages
    (a padding extra field, `FB`), with the end record's claims overridable."""
    out, header_at, data_at = bytearray(), [], []
    for e in entries:
        if e.header_of is not None or e.inside is not None:  # no local header of its own
            header_at.append(header_at[e.header_of] if e.inside is None else data_at[e.inside])
            data_at.append(None)
            continue
        fixed = len(local_header(e))
        pad = -(len(out) + fixed + 4) % 64
        header_at.append(len(out))
        out += local_header(e, b"FB" + struct.pack("<H", pad) + b"Z" * pad)
        data_at.append(len(out))
        out += e.data
    start = len(out)
    for e, at in zip(entries, header_at):
        out += central_header(e, at)
    size = len(out) - start if cd_size is None else cd_size
    offset = start if cd_offset is None else cd_offset
    n = len(entries) if count is None else count
    if zip64_count is not None:
        z64 = len(out)
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0,
                           zip64_count, zip64_count, size, offset)
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, z64, 1)
        n, size, offset = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    if eocd:
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, size, offset, 0)
    return bytes(out)


def torch_entries(pkl, storages=(), prefix="archive", byteorder=b"little"):
    """The entries of a torch.save archive, in the order torch writes them."""
    es = [Entry(f"{prefix}/data.pkl", pkl), Entry(f"{prefix}/.format_version", b"1"),
          Entry(f"{prefix}/.storage_alignment", b"64")]
    if byteorder is not None:
        es.append(Entry(f"{prefix}/byteorder", byteorder))
    es += [Entry(f"{prefix}/data/{k}", v) for k, v in dict(storages).items()]
    es += [Entry(f"{prefix}/version", b"3\n"), Entry(f"{prefix}/.data/serialization_id", SERIAL_ID)]
    return es


def torch_zip(pkl, storages=(), **kw):
    return zip_bytes(torch_entries(pkl, storages, **kw))


def index_of(entries, suffix):
    return next(i for i, e in enumerate(entries) if e.name.endswith(suffix))


# A small archive that loads but is no ResNet: {"weight": float tensor [2, 2]}.
TINY_PKL = state_dict([("weight", p_tensor("0", (2, 2)))])
TINY_STORAGES = {"0": floats(1, 2, 3, 4)}


def tiny_entries(**kw):
    return torch_entries(TINY_PKL, TINY_STORAGES, **kw)


def archive(pairs, storages=None):
    """A well-formed archive of the state dict `pairs` over one 16-float storage `0`."""
    return torch_zip(state_dict(pairs), {"0": floats(*range(16))} if storages is None else storages)


# ---------------------------------------------------------------------------------------------
# safetensors writer


def safetensors(items, data=b"", hlen=None, header=None):
    """`items`: (name, info) pairs, written by hand so that a name may repeat."""
    if header is None:
        header = ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items)
                  + "}").encode()
        header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header) if hlen is None else hlen) + header + data


def st(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# ---------------------------------------------------------------------------------------------
# ResNet-18 in torchvision's layout


def resnet18_layout(classes=1000):
    """(name, shape) of torchvision's resnet18 state dict, in its order."""
    def bn(pre, c):
        return [(f"{pre}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] \
            + [(f"{pre}.num_batches_tracked", ())]

    out = [("conv1.weight", (64, 3, 7, 7))] + bn("bn1", 64)
    cin = 64
    for i, c in enumerate((64, 128, 256, 512), 1):
        for b in range(2):
            pre = f"layer{i}.{b}"
            out += [(f"{pre}.conv1.weight", (c, cin if b == 0 else c, 3, 3))] + bn(f"{pre}.bn1", c)
            out += [(f"{pre}.conv2.weight", (c, c, 3, 3))] + bn(f"{pre}.bn2", c)
            if b == 0 and cin != c:
                out += [(f"{pre}.downsample.0.weight", (c, cin, 1, 1))]
                out += bn(f"{pre}.downsample.1", c)
        cin = c
    return out + [("fc.weight", (classes, 512)), ("fc.bias", (classes,))]


def resnet18_zip(layout):
    """Every tensor a view at offset 0 of one float storage of zeros as big as the largest."""
    big = 512 * 512 * 3 * 3
    pairs = []
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            pairs.append((name, p_tensor("1", (), numel=1, stype="LongStorage")))
        else:
            pairs.append((name, p_tensor("0", shape, numel=big)))
    return torch_zip(state_dict(pairs), {"0": bytes(4 * big), "1": bytes(8)})


# ---------------------------------------------------------------------------------------------
# The hostile files: one function per family, each yielding File records.

File = namedtuple("File", "name cls what expect data")


def pkl_zip(body, proto=2):
    """An archive whose data.pkl is `body` between PROTO and STOP."""
    return torch_zip(pickle_of(body, proto))


def tiny_with(suffix, **changes):
    """The small archive with the entry ending in `suffix` changed."""
    es = tiny_entries()
    i = index_of(es, suffix)
    es[i] = replace(es[i], **changes)
    return zip_bytes(es)


def deflated(raw):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return dict(data=c.compress(raw) + c.flush(), method=8, crc=zlib.crc32(raw), size=len(raw))


def nesting(ctx):
    # Recursion in the reader, or in whatever walks its values: a million levels, 1-2 bytes each.
    depth = ["nested", "depth"]
    yield File("deep_tuple1.pth", "pickle depth", "an empty list wrapped in TUPLE1 a million "
               "times", depth, pkl_zip(b"]" + b"\x85" * 1_000_000))
    body = p_dict([("state_dict", b"]" * 1_000_000 + b"a" * 999_999)], ordered=False)
    yield File("deep_append.pth", "pickle depth", "a million lists, each APPENDed to the one "
               "below, under state_dict", depth, pkl_zip(body))
    # A cycle: a list appended to itself.
    body = p_dict([("state_dict", b"]" + p_put(0) + p_get(0) + b"a")], ordered=False)
    yield File("cyclic_list.pth", "pickle sharing", "under state_dict a list appended to itself",
               ["not a state dict", "no state dict", "cycle"], pkl_zip(body))


def sharing(ctx):
    # "Billion laughs": each level holds 10 references to the level below, so copying any of it,
    # or walking it as a tree, costs 10^levels.
    expect = ["objects", "not a state dict", "holds no state dict"]
    body = p_list(p_str("lol")) + p_put(0)
    for i in range(1, 281):
        body += b"0](" + p_get(i - 1) * 10 + b"e" + p_put(i)  # POP the level below first
    yield File("laughs_memo.pth", "pickle sharing", "280 levels of lists, each of 10 BINGETs of "
               "the level below (10^280 leaves), in 8 KB", expect, pkl_zip(body))
    body = p_list(p_str("lol"))
    for i in range(1, 12):
        body = b"](" + body + p_put(i) + b"2" * 9 + b"e"
    yield File("laughs_dup.pth", "pickle sharing", "11 levels of lists, each of 10 DUPs of the "
               "level below, under state_dict", expect,
               pkl_zip(p_dict([("state_dict", body)], ordered=False)))
    # One mebibyte referenced 200,000 times: 200 GB to a reader that copies instead of sharing.
    expect = ["holds no state dict", "objects"]
    mib = random.Random(SEED).randbytes(1 << 20)
    yield File("mebibyte_binget.pth", "pickle sharing", "a list of 200,000 BINGETs of one 1 MiB "
               "bytes value", expect,
               pkl_zip(b"](" + p_bytes(mib) + p_put(0) + p_get(0) * 199_999 + b"e"))
    yield File("mebibyte_dup.pth", "pickle sharing", "a list of 200,000 DUPs of one 1 MiB bytes "
               "value", expect, pkl_zip(b"](" + p_bytes(mib) + b"2" * 199_999 + b"e"))
    yield File("mebibyte_memoize.pth", "pickle sharing", "one 1 MiB bytes value MEMOIZEd 200,000 "
               "times, then an empty dict", expect + ["memo"],
               pkl_zip(p_bytes(mib) + b"\x94" * 200_000 + b"0}", 4))
    # 16 million values from a pickle just under 16 MiB.
    yield File("object_flood.pth", "pickle size", "a list of 16 million Nones (a 16 MB "
               "data.pkl)", ["objects", "data.pkl"], pkl_zip(b"](" + b"N" * 16_000_000 + b"e"))


def zip_directory(ctx):
    # Sizes: the directory claims a data.pkl far bigger than the file, to make a reader
    # allocate what the header says, or read past the end.
    expect = ["past the end", "size", "data.pkl"]
    for name, size in (("zip64_pkl_2e50.pth", 2**50), ("zip64_pkl_u64max.pth", 2**64 - 1)):
        yield File(name, "zip sizes", f"zip64 extra fields claim data.pkl holds {size} bytes",
                   expect, tiny_with("data.pkl", zip64=True, size=size, csize=size))
    yield File("pkl_size_past_end.pth", "zip sizes", "the directory claims a 100 MB data.pkl in "
               "a 1 KB file", expect, tiny_with("data.pkl", size=10**8, csize=10**8))
    # The end-of-central-directory record and the directory itself.
    expect = ["zip", "central directory", "truncated", "past the end"]
    whole = zip_bytes(tiny_entries())
    cases = [
        ("eocd_2e32_entries", "a zip64 end record claiming 2^32-1 entries",
         dict(zip64_count=2**32 - 1)),
        ("eocd_60000_entries", "the end record claims 60,000 entries, the directory holds 7",
         dict(count=60000)),
        ("cd_offset_beyond", "the directory's offset lies 1 MB past the end of the file",
         dict(cd_offset=len(whole) + 10**6)),
        ("cd_size_2e31", "the end record claims a 2 GiB directory", dict(cd_size=2**31)),
        ("zip_no_eocd", "a valid archive without its end record", dict(eocd=False)),
    ]
    for name, what, lies in cases:
        yield File(f"{name}.pth", "zip directory", what, expect + ["entries"] * ("entries" in name),
                   zip_bytes(tiny_entries(), **lies))
    yield File("zip_truncated.pth", "zip directory", "a valid archive cut in half", expect,
               whole[: len(whole) // 2])


def compression(ctx):
    # torch.save stores every entry; compressed ones are refused, bombs included.
    yield File("deflated_pkl.pth", "compressed", "data.pkl compressed with deflate",
               ["compressed"], tiny_with("data.pkl", **deflated(TINY_PKL)))
    yield File("deflated_storage.pth", "compressed", "a storage compressed with deflate",
               ["compressed"], tiny_with("/data/0", **deflated(TINY_STORAGES["0"])))
    comp, n, chunk = bz2.BZ2Compressor(9), 256 << 20, b"N" * (8 << 20)
    bomb, crc = [comp.compress(b"\x80\x02")], zlib.crc32(b"\x80\x02")
    for _ in range(n // len(chunk)):
        bomb.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    bomb = b"".join(bomb + [comp.compress(b"."), comp.flush()])
    yield File("bzip2_bomb_pkl.pth", "compressed", f"a {len(bomb)}-byte bzip2 data.pkl that "
               "inflates to 256 MiB of None pushes", ["compressed"],
               tiny_with("data.pkl", data=bomb, method=12, crc=zlib.crc32(b".", crc), size=n + 3))
    yield File("zstd_method_pkl.pth", "compressed", "data.pkl claims compression method 93 "
               "(zstd)", ["compressed", "method"], tiny_with("data.pkl", method=93))
    yield File("encrypted_pkl.pth", "compressed", "data.pkl flagged as encrypted",
               ["encrypted", "compressed"], tiny_with("data.pkl", flags=1))
    # A damaged download: one bit flipped after the CRC-32 was taken.
    flipped = bytearray(TINY_STORAGES["0"])
    flipped[5] ^= 0x40
    yield File("crc_mismatch.pth", "damaged", "a storage with one bit flipped after its CRC-32 "
               "was taken", ["crc"],
               tiny_with("/data/0", data=bytes(flipped), crc=zlib.crc32(TINY_STORAGES["0"])))


def overlap(ctx):
    # Entries whose bytes are the same bytes: a zip bomb's trick, and tensors meant to be
    # distinct sharing memory.
    pkl = state_dict([(n, p_tensor(k, (4,))) for n, k in (("a", "0"), ("b", "1"), ("c", "2"))])
    es = torch_entries(pkl, {"0": floats(*range(16))})
    i = index_of(es, "/data/0")
    es[i + 1:i + 1] = [Entry(f"archive/data/{k}", es[i].data, header_of=i) for k in "12"]
    yield File("overlap_same_header.pth", "zip overlap", "directory entries data/0, data/1 and "
               "data/2 all point at data/0's local header", ["overlap", "local header"],
               zip_bytes(es))
    pkl = state_dict([("a", p_tensor("0", (15,))), ("b", p_tensor("1", (4,)))])
    inner = Entry("archive/data/1", floats(1, 2, 3, 4))
    es = torch_entries(pkl, {"0": local_header(inner) + inner.data})  # 60 bytes: 15 floats
    i = index_of(es, "/data/0")
    es.insert(i + 1, replace(inner, inside=i))
    yield File("overlap_nested_entry.pth", "zip overlap", "entry data/1 (header and bytes) lies "
               "inside the bytes of entry data/0", ["overlap"], zip_bytes(es))


def views(ctx):
    # Tensor views that read an element many times, overflow the bounds arithmetic, or reach
    # outside their storage.
    for name, size in (("stride0_2e31", (2**31,)), ("stride0_square", (1 << 20, 1 << 20))):
        pkl = state_dict([("conv1.weight", p_tensor("0", size, (0,) * len(size), numel=1))])
        yield File(f"{name}.pth", "tensor view", f"size {size} with stride 0 over a 4-byte "
                   "storage", ["more than once", "overlap"], torch_zip(pkl, {"0": floats(1)}))
    expect = ["overflow", "too large", "negative", "size", "stride", "reaches"]
    cases = [  # name, what, size, stride, storage offset
        ("i64_overflow", "size (2^40, 2^40), stride (2^40, 1)", (2**40,) * 2, (2**40, 1), 0),
        ("negative_size", "size (-1, 4)", (-1, 4), (4, 1), 0),
        ("negative_stride", "stride (-1,) from offset 3", (4,), (-1,), 3),
        ("negative_offset", "storage offset -1", (4,), (1,), -1),
        ("huge_offset", "storage offset 2^62", (4,), (1,), 2**62),
        ("offset_2e64", "storage offset 2^64, past i64", (4,), (1,), 2**64),
        ("size_2e63", "size (2^63,), past i64", (2**63,), (1,), 0),
        ("rank_mismatch", "size (2, 2) with stride (2,)", (2, 2), (2,), 0),
        ("size_not_int", "size ('2', 2)", ("2", 2), (2, 1), 0),
        ("100_dims", "100 dimensions of size 1", (1,) * 100, (1,) * 100, 0),
        ("past_end", "size (5, 4) over 16 floats", (5, 4), (4, 1), 0),
    ]
    for name, what, size, stride, offset in cases:
        t = p_tensor("0", size, stride, offset, numel=16)
        yield File(f"view_{name}.pth", "tensor view", f"a tensor with {what}",
                   expect + ["dimensions"] * ("dims" in name) + ["64 bits"],
                   archive([("weight", t)]))


def storages(ctx):
    # Storages that are missing, of a type the reader must not guess at, or ragged.
    yield File("storage_missing.pth", "storage", "a tensor over storage 99, which has no entry",
               ["no entry"], archive([("weight", p_tensor("99", (4,)))]))
    for stype in ("ComplexFloatStorage", "QInt8Storage"):
        yield File(f"storage_{stype}.pth", "storage", f"a tensor over a torch.{stype}",
                   ["unsupported storage"], archive([("w", p_tensor("0", (2,), stype=stype))]))
    pid = p_tuple(*map(p, ("storage", p_global("os", "system"), "0", "cpu", 4))) + b"Q"
    t = p_call(p_global("torch._utils", "_rebuild_tensor_v2"), pid, 0, (4,), (1,), False,
               p_dict([]))
    yield File("storage_os_system.pth", "storage", "a persistent id naming os.system as its "
               "storage type", ["unsupported storage", "storage type"], archive([("weight", t)]))
    yield File("storage_ragged.pth", "storage", "a float storage of 10 bytes", ["whole number"],
               archive([("weight", p_tensor("0", (2,)))], {"0": bytes(10)}))


def safetensors_files(ctx):
    # The safetensors header: its length, its JSON, and the ranges and shapes it claims.
    yield File("st_header_len_u64max.safetensors", "safetensors", "header length u64::MAX",
               ["header", "unrecognised"], b"\xff" * 8 + b'{"a": 1}')
    yield File("st_header_len_past_end.safetensors", "safetensors", "header length 1 MiB in a "
               "24-byte file", ["header", "unrecognised"], safetensors([], b"", 1 << 20, b"{}" * 8))
    yield File("st_header_not_json.safetensors", "safetensors", "a header that is not JSON",
               ["header", "json"], safetensors([], header=b'{"conv1.weight": {"dtype": "F32", '))
    yield File("st_header_not_utf8.safetensors", "safetensors", "a header that is not UTF-8",
               ["header", "utf-8"], safetensors([], header=b'{"\xff\xfe": 1}'))
    f32 = floats(*range(16))
    cases = [  # name, what, header items, bytes in the buffer, expect
        ("offsets_near_2e64", "data_offsets [2^64-8, 2^64-4]",
         [("w", st("F32", [1], 2**64 - 8, 2**64 - 4))], 8, ["offset"]),
        ("offsets_reversed", "data_offsets [8, 4]", [("w", st("F32", [1], 8, 4))], 8, ["offset"]),
        ("offsets_beyond", "data_offsets [0, 4000] over a 64-byte buffer",
         [("w", st("F32", [1000], 0, 4000))], 64, ["offset"]),
        ("overlap", "two tensors over bytes [0, 32) and [16, 48)",
         [("a", st("F32", [8], 0, 32)), ("b", st("F32", [8], 16, 48))], 48, ["overlap", "offset"]),
        ("length_mismatch", "shape [4] F32 over 12 bytes", [("w", st("F32", [4], 0, 12))], 12,
         ["shape", "offset", "bytes"]),
        ("dtype_f8", "dtype F8_E4M3", [("w", st("F8_E4M3", [4], 0, 4))], 4, ["dtype"]),
        ("dtype_c64", "dtype C64", [("w", st("C64", [2], 0, 16))], 16, ["dtype"]),
        ("shape_overflow", "shape [2^32, 2^32, 2^32], whose product overflows u64",
         [("w", st("F32", [2**32] * 3, 0, 4))], 4, ["shape", "overflow", "too large"]),
        ("shape_negative", "shape [-1]", [("w", st("F32", [-1], 0, 4))], 4, ["shape", "header"]),
        ("hole", "two tensors with a 16-byte gap between them",
         [("a", st("F32", [4], 0, 16)), ("b", st("F32", [4], 32, 48))], 48,
         ["offset", "gap", "hole"]),
        ("duplicate_name", "the name conv1.weight twice in the header",
         [("conv1.weight", st("F32", [4], 0, 16)), ("conv1.weight", st("F32", [4], 16, 32))],
         32, ["duplicate"]),
        ("metadata_not_str", "__metadata__ whose value is a number, not a string",
         [("__metadata__", {"format": 1}), ("w", st("F32", [16], 0, 64))], 64,
         ["metadata", "header"]),
    ]
    for name, what, items, n, expect in cases:
        yield File(f"st_{name}.safetensors", "safetensors", what, expect,
                   safetensors(items, f32[:n]))
    items = [(k, st("F32", [1], 4 * i, 4 * i + 4)) for i, k in enumerate(RESNET_NAMES)]
    items.append(("fc.weight", st("F32", [], 28, 32)))
    yield File("st_fc_weight_0dim.safetensors", "resnet layout", "a ResNet-shaped safetensors "
               "whose fc.weight has no dimensions", ["fc.weight"], safetensors(items, f32[:32]))
    yield File("st_escape_name.safetensors", "escaping", "a tensor named with a terminal escape "
               "and a newline", ESCAPED,
               safetensors([("\x1b[2J\nfc.weight", st("F32", [4], 0, 16))], f32[:16]))


# The names from which a reader infers a ResNet's architecture.
RESNET_NAMES = ["conv1.weight", "bn1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight",
                "layer2.0.conv1.weight", "layer3.0.conv1.weight", "layer4.0.conv1.weight"]
ESCAPED = ["\\u{1b}", "\\x1b", "\\n"]


def resnet_layouts(ctx):
    # Right names, wrong head: the checks after the reader.
    for dims in (0, 1):
        n = 1000 if dims else 1
        pairs = [(k, p_tensor("0", (1,) * (4 if "conv" in k else 1), numel=n))
                 for k in RESNET_NAMES]
        pairs += [("fc.weight", p_tensor("0", (1000,) * dims, numel=n)),
                  ("fc.bias", p_tensor("0", (1,), numel=n))]
        yield File(f"fc_weight_{dims}dim.pth", "resnet layout", "ResNet names over 1-element "
                   f"tensors, and a {dims}-dimensional fc.weight", ["fc.weight"],
                   archive(pairs, {"0": bytes(4 * n)}))
    yield File("resnet18_zero_classes.pth", "resnet layout", "a complete ResNet-18 with "
               "fc.weight [0, 512] and fc.bias [0]", ["0 classes", "fc.weight"],
               resnet18_zip(resnet18_layout(0)))
    yield File("resnet18_duplicate_fc.pth", "resnet layout", "a complete ResNet-18 whose dict "
               "sets fc.weight twice, last to [1000, 7]", ["fc.weight"],
               resnet18_zip(resnet18_layout() + [("fc.weight", (1000, 7))]))


def archive_layout(ctx):
    # Archives whose entries contradict one another.
    other = state_dict([("bias", p_tensor("0", (4,)))])
    es = tiny_entries(prefix="a") + torch_entries(other, TINY_STORAGES, prefix="b")
    yield File("two_archives.pth", "archive layout", "two complete archives, a/ and b/, in one "
               "zip", ["archives", "ambiguous"], zip_bytes(es))
    es = tiny_entries()
    es.insert(1, Entry("archive/data.pkl", other))
    yield File("duplicate_entry_name.pth", "archive layout", "two archive/data.pkl entries with "
               "different pickles", ["duplicate"], zip_bytes(es))
    es = tiny_entries()
    es.insert(index_of(es, "/data/0") + 1, Entry("archive/data/0", floats(5, 6, 7, 8)))
    yield File("duplicate_storage_entry.pth", "archive layout", "two archive/data/0 entries "
               "with different bytes", ["duplicate"], zip_bytes(es))
    yield File("byteorder_middle.pth", "archive layout", "byteorder 'middle'", ["byteorder"],
               zip_bytes(tiny_entries(byteorder=b"middle")))


def escapes(ctx):
    # Names that would recolour, clear or retitle a terminal, or forge log lines.
    yield File("escape_tensor_name.pth", "escaping", "a tensor named \"\\x1b[31mred\\nnext "
               "line\\r\"", ESCAPED, archive([("\x1b[31mred\nnext line\r", p_tensor("0", (2,)))]))
    key = "\x1b]0;owned\x07\n0"
    yield File("escape_entry_name.pth", "escaping", "a storage key and entry name with an OSC "
               "escape and a newline, its entry 3 bytes long", ESCAPED,
               torch_zip(state_dict([("weight", p_tensor(key, (2,)))]), {key: b"abc"}))
    yield File("escape_class_name.pth", "escaping", "a pickled object of a class whose module "
               "name holds an escape and a newline", ESCAPED,
               pkl_zip(p_call(p_stack_global("evil\x1b[2J\nmod", "Cls\r")), 4))


def code_execution(ctx):
    # Each creates the marker file when Python unpickles it; the reader must run none of it.
    m = ctx.marker
    cmd = f"touch {shlex.quote(m)}"
    system = p_call(p_global("os", "system"), cmd)
    setstate = (p_call(p_global("types", "SimpleNamespace"))
                + p_dict([("__setstate__", p_global("os", "system"))], ordered=False) + b"b"
                + p_str(cmd) + b"b")
    cases = [  # name, what, pickle body, protocol
        ("os_system", "os.system called by REDUCE at the top level", system, 2),
        ("posix_system", "posix.system under model_state_dict",
         p_dict([("model_state_dict", p_call(p_global("posix", "system"), cmd))]), 2),
        ("builtins_eval", "builtins.eval of __import__('os').system(...) under model",
         p_dict([("model", p_call(p_global("builtins", "eval"),
                                  f"__import__('os').system({cmd!r})"))]), 2),
        ("builtins_exec", "builtins.exec of open(marker, 'w')",
         p_call(p_global("builtins", "exec"), f"open({m!r}, 'w').close()"), 2),
        ("subprocess_popen", "subprocess.Popen(['touch', marker])",
         p_call(p_global("subprocess", "Popen"), ["touch", m]), 2),
        ("inst", "the INST opcode calling os.system", b"(" + p_str(cmd) + b"ios\nsystem\n", 2),
        ("obj", "the OBJ opcode calling os.system",
         b"(" + p_global("os", "system") + p_str(cmd) + b"o", 2),
        ("build_setstate", "BUILD giving an object an os.system __setstate__, then BUILD "
         "calling it, under state_dict", p_dict([("state_dict", setstate)]), 2),
        ("under_state_dict", "os.system called by REDUCE under state_dict",
         p_dict([("state_dict", system)]), 2),
        ("rebuild_parameter", "_rebuild_parameter of an os.system call, as conv1.weight",
         p_dict([("conv1.weight", p_call(p_global("torch._utils", "_rebuild_parameter"),
                                         system, False, p_dict([])))]), 2),
        ("stack_global", "os.system through STACK_GLOBAL (protocol 4)",
         p_stack_global("os", "system") + p_str(cmd) + b"\x85R", 4),
    ]
    for name, what, body, proto in cases:
        yield File(f"exec_{name}.pth", "code execution", what,
                   ["no state dict", "opcode", "not a state dict", "without a tensor"],
                   pkl_zip(body, proto))


def pickle_machine(ctx):
    # Opcodes whose length fields claim far more than the pickle holds.
    def u64(n):
        return struct.pack("<Q", n)

    cases = [  # name, what, pickle body, protocol
        ("binunicode8_2e63", "BINUNICODE8 claiming 2^63 bytes", b"\x8d" + u64(2**63) + b"abc", 4),
        ("binbytes8_2e63", "BINBYTES8 claiming 2^63 bytes", b"\x8e" + u64(2**63) + b"abc", 4),
        ("long4_2e31", "LONG4 claiming 2^31-1 bytes",
         b"\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01", 2),
        ("binunicode_u32max", "BINUNICODE claiming 2^32-1 bytes",
         b"X" + struct.pack("<I", 2**32 - 1) + b"abc", 2),
        ("frame_2e60", "FRAME claiming 2^60 bytes before an empty dict",
         b"\x95" + u64(2**60) + b"}", 4),
    ]
    for name, what, body, proto in cases:
        yield File(f"{name}.pth", "pickle lengths", what,
                   ["truncated", "ends before"] + ["frame"] * ("frame" in name)
                   + ["unsupported pickle opcode"] * ("long4" in name),
                   pkl_zip(body, proto))
    # The unpickler's own state: its mark stack and its memo.
    expect = ["mark", "memo", "malformed"]
    yield File("million_marks.pth", "pickle machine", "a million MARKs and nothing else",
               expect + ["objects", "stack"], torch_zip(b"\x80\x02" + b"(" * 1_000_000 + b"."))
    yield File("memo_unset.pth", "pickle machine", "BINGET of memo 7, never set", expect,
               pkl_zip(p_dict([("weight", p_get(7))], ordered=False)))
    yield File("memo_u32max.pth", "pickle machine", "LONG_BINPUT 2^32-1 of a dict, then that "
               "dict set in itself by LONG_BINGET", expect + ["no state dict"],
               pkl_zip(b"}" + p_put(2**32 - 1) + b"(" + p_str("w") + p_get(2**32 - 1) + b"u"))
    yield File("memo_put_empty_stack.pth", "pickle machine", "BINPUT with nothing on the stack",
               expect + ["stack"], pkl_zip(p_put(0) + b"}"))
    # Opcodes a state dict never needs: out-of-band buffers, copyreg's extension registry.
    for name, what, body, proto in (
            ("next_buffer", "protocol 5's NEXT_BUFFER", b"\x97", 5),
            ("readonly_buffer", "protocol 5's READONLY_BUFFER over bytes",
             p_bytes(b"x") + b"\x98", 5),
            ("ext1", "EXT1, a lookup in copyreg's extension registry", b"\x82\x01", 2)):
        yield File(f"{name}.pth", "pickle machine", what, ["opcode"], pkl_zip(body, proto))


def not_weights(ctx):
    # Files that are no weights file at all, or the wrong kind of archive.
    yield File("empty.pth", "not weights", "an empty file", ["empty", "unrecognised"], b"")
    yield File("random.pth", "not weights", "4 KiB of random bytes", ["unrecognised"],
               random.Random(SEED + 1).randbytes(4096))
    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 \
        + b"\nsize 102535551\n"
    yield File("lfs_pointer.pth", "not weights", "a Git LFS pointer instead of the weights",
               ["unrecognised", "lfs", "text"], lfs)
    magic = 0x1950A86A20F9469CFC6C.to_bytes(10, "little")
    yield File("legacy_torch.pth", "not weights", "the start of a torch.save file from before "
               "PyTorch 1.6 (a bare pickle)", ["unrecognised", "1.6", "legacy"],
               b"\x80\x02\x8a\x0a" + magic + b".\x80\x02M\xe9\x03.")
    es = [Entry("model/data.pkl", pickle_of(p_call(p_global("__torch__", "Net")))),
          Entry("model/code/__torch__.py", b"class Net(Module):\n  pass\n"),
          Entry("model/constants.pkl", pickle_of(b")")), Entry("model/version", b"3\n")]
    yield File("torchscript.pt", "not weights", "a TorchScript archive (constants.pkl, code/)",
               ["torchscript"], zip_bytes(es))
    yield File("no_data_pkl.pth", "not weights", "a torch archive without data.pkl", ["data.pkl"],
               zip_bytes([e for e in tiny_entries() if not e.name.endswith("data.pkl")]))
    yield File("nested_data_pkl.pth", "not weights", "data.pkl two directories down",
               ["data.pkl"], zip_bytes([replace(e, name="deep/" + e.name) for e in tiny_entries()]))


FAMILIES = [nesting, sharing, zip_directory, compression, overlap, views, storages,
            safetensors_files, resnet_layouts, archive_layout, escapes, code_execution,
            pickle_machine, not_weights]


# ---------------------------------------------------------------------------------------------
# Big-endian conversion of a real archive

WIDTHS = {"Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
          "Char": 1, "Byte": 1, "Bool": 1}


def storage_types(pkl):
    """storage key -> type name ("Float", ...), from the persistent ids in a torch.save pickle.

    Follows the pickle's stack symbolically (values are strings, ints, globals or tuples of
    them; everything else is a placeholder) with pickletools' stack effects; nothing is built."""
    mark, slice_ = pickletools.markobject, pickletools.stackslice
    memo, groups, found = {}, [[]], {}
    for op, arg, _ in pickletools.genops(pkl):
        cur = groups[-1]
        if op.name == "MARK":
            groups.append([])
        elif op.name == "GLOBAL":
            cur.append(("global", arg.replace(" ", ".")))
        elif op.name == "STACK_GLOBAL":
            module, name = cur[-2:]
            cur[-2:] = [("global", f"{module}.{name}")]
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = cur[-1]
        elif op.name == "MEMOIZE":
            memo[len(memo)] = cur[-1]
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            cur.append(memo.get(arg))
        elif op.name == "TUPLE":
            items = groups.pop()
            groups[-1].append(tuple(items))
        elif op.name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(op.name[-1])
            cur[-n:] = [tuple(cur[-n:])]
        elif op.name == "BINPERSID":
            pid = cur.pop()
            if isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage":
                cls = pid[1][1] if isinstance(pid[1], tuple) else ""
                found[pid[2]] = cls.removeprefix("torch.").removesuffix("Storage")
            cur.append(None)
        elif arg is not None and not op.stack_before and len(op.stack_after) == 1:
            cur.append(arg)  # strings, ints and other pushed constants
        else:
            before = op.stack_before
            if mark in before:
                groups.pop()
                cur = groups[-1]
            n = len([s for s in before if s not in (mark, slice_)])
            if n:
                del cur[-n:]
            cur.extend([None] * len(op.stack_after))
    return found


def to_big_endian(src, dst):
    import zipfile  # reading only; every entry is rewritten by this script's own zip writer

    with zipfile.ZipFile(src) as z:
        infos = z.infolist()
        pkls = [i.filename for i in infos if i.filename.endswith("/data.pkl")
                and i.filename.count("/") == 1]
        if len(pkls) != 1:
            sys.exit(f"{src}: expected one <prefix>/data.pkl, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        types = storage_types(z.read(pkls[0]))
        entries, seen_byteorder = [], False
        for info in infos:
            data, rel = z.read(info), info.filename[len(prefix):]
            if rel == "byteorder":
                data, seen_byteorder = b"big", True
            elif rel.startswith("data/") and rel[5:] in types:
                width = WIDTHS.get(types[rel[5:]])
                if width is None:
                    sys.exit(f"{src}: storage {rel[5:]} has type {types[rel[5:]]}")
                if width > 1:
                    a = array.array({2: "H", 4: "I", 8: "Q"}[width], data)
                    a.byteswap()
                    data = a.tobytes()
            entries.append(Entry(info.filename, data))
        if not seen_byteorder:
            entries.insert(1, Entry(prefix + "byteorder", b"big"))
    Path(dst).write_bytes(zip_bytes(entries))
    print(f"{dst}: {len(types)} storages swapped", file=sys.stderr)


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", nargs="?", help="where the files and manifest.json go")
    ap.add_argument("--marker", help="the file the code-execution attempts would create")
    ap.add_argument("--big-endian", nargs=2, metavar=("SRC", "DST"),
                    help="rewrite a torch.save archive with big-endian storages instead")
    args = ap.parse_args()
    if args.big_endian:
        return to_big_endian(*args.big_endian)
    if not args.outdir or not args.marker:
        ap.error("OUTDIR and --marker are required")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = argparse.Namespace(marker=args.marker)
    manifest, names = [], set()
    for family in FAMILIES:
        for f in family(ctx):
            assert f.name not in names, f.name
            names.add(f.name)
            (out / f.name).write_bytes(f.data)
            manifest.append({"file": f.name, "class": f.cls, "what": f.what,
                             "expect": [e.lower() for e in f.expect]})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
