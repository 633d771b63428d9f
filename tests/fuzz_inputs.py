"""Damaged images and hostile JSON values for the fuzz tests, generated from a seed.

Every sample is reproducible from `random.Random(seed)`: a failing case can be rebuilt and
replayed by its index. Images start as valid files in every format Pillow can write (plus a
few it only reads, built by hand) and are then damaged the ways real corruption and crafted
files look: truncated, bytes flipped, header fields rewritten, chunk lengths inflated.
"""
from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Callable, Iterator

from PIL import Image

# formats Pillow writes from an RGB/L image without extra plug-ins or arguments
WRITABLE = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "QOI", "TGA", "PCX", "SGI", "IM",
            "DDS", "JPEG2000", "MSP", "XBM", "SPIDER", "BLP", "EPS")


def _source_image(rng: random.Random, size: int = 16) -> Image.Image:
    data = bytes(rng.randrange(256) for _ in range(size * size * 3))
    return Image.frombytes("RGB", (size, size), data)


def valid_files(seed: int = 0) -> dict[str, bytes]:
    """One small valid file per writable format (skipping formats this Pillow build cannot write)."""
    rng = random.Random(seed)
    image = _source_image(rng)
    files: dict[str, bytes] = {}
    for fmt in WRITABLE:
        picture = image
        if fmt in ("MSP", "XBM"):
            picture = image.convert("1")
        elif fmt == "SPIDER":
            picture = image.convert("F")
        buffer = io.BytesIO()
        try:
            picture.save(buffer, fmt)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        files[fmt] = buffer.getvalue()
    files.update(handmade_files())
    return files


def handmade_files() -> dict[str, bytes]:
    """Formats Pillow reads but does not write (or writes only with extras): minimal valid headers."""
    sun = struct.pack(">8I", 0x59A66A95, 2, 2, 8, 4, 1, 0, 0) + bytes(4)
    xpm = (b'/* XPM */\nstatic char *x[] = {\n"2 2 1 1",\n"a c #ff0000",\n"aa",\n"aa"\n};\n')
    gbr = struct.pack(">7I", 29, 2, 2, 2, 1, 0x47494D50, 0) + b"b\x00" + bytes(4)
    return {"SUN": sun, "XPM": xpm, "GBR": gbr}


def _inflate_lengths(data: bytes, rng: random.Random) -> bytes:
    """Rewrite a few 4-byte big- or little-endian fields in the first 256 bytes to huge values."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if len(out) < 8:
            break
        offset = rng.randrange(0, min(len(out) - 4, 256))
        value = rng.choice((0xFFFFFFFF, 0x7FFFFFFF, 0x10000000, 0x00FFFFFF, 0x80000000))
        out[offset:offset + 4] = struct.pack(rng.choice((">I", "<I")), value)
    return bytes(out)


def _png_inflate_chunk(data: bytes, rng: random.Random) -> bytes:
    """In a PNG, give one chunk a wrong (mostly huge) length."""
    if not data.startswith(b"\x89PNG"):
        return _inflate_lengths(data, rng)
    offsets, position = [], 8
    while position + 8 <= len(data):
        offsets.append(position)
        (length,) = struct.unpack(">I", data[position:position + 4])
        position += 12 + length
    if not offsets:
        return _inflate_lengths(data, rng)
    out = bytearray(data)
    offset = rng.choice(offsets)
    out[offset:offset + 4] = struct.pack(">I", rng.choice((0xFFFFFFF0, 0x7FFFFFFF, 1 << 24, rng.randrange(1 << 16))))
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(0, max(1, len(data)))]


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        index = rng.randrange(len(out))
        out[index] ^= 1 << rng.randrange(8)
    return bytes(out)


def _header(data: bytes, rng: random.Random) -> bytes:
    """Overwrite bytes inside the header (past the magic, where sizes, modes and offsets live)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        index = rng.randrange(min(len(out), 64))
        out[index] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return bytes(out)


MUTATIONS: tuple[Callable[[bytes, random.Random], bytes], ...] = (_truncate, _flip, _header, _inflate_lengths,
                                                                    _png_inflate_chunk)


def known_bad() -> dict[str, bytes]:
    """The reproductions of issue 23 and a few more crafted files, each once."""
    files = valid_files()
    bmp = bytearray(files["BMP"])
    bmp[30:34] = struct.pack("<I", 99)                      # compression field 99
    qoi = bytearray(files["QOI"])
    qoi[12] = 9                                             # channels 9 (IndexError in Pillow)
    return {
        "ppm-bad-width": b"P6\nxx 10\n255\n" + bytes(30),
        "bmp-compression-99": bytes(bmp),
        "webp-40-bytes": files["WEBP"][:40],
        "qoi-bad-header": bytes(qoi),
        "png-ztxt-bomb": png_with_text_bomb(files["PNG"]),
        "png-huge-canvas": png_header_only(60000, 60000),
        "empty": b"",
        "not-an-image": b"hello, world",
        "gif-no-frames": b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
    }


def png_with_text_bomb(png: bytes, megabytes: int = 8) -> bytes:
    """A valid PNG plus a zTXt chunk that inflates to `megabytes` MB (Pillow refuses text over 1 MB)."""
    compressor = zlib.compressobj(9)
    block = bytes(1 << 20)
    compressed = b"".join(compressor.compress(block) for _ in range(megabytes)) + compressor.flush()
    body = b"Comment\x00\x00" + compressed
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + body) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]                     # right after IHDR


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge canvas (a decompression bomb that never gets to its pixels)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return b"\x89PNG\r\n\x1a\n" + chunk + end


def damaged_images(seed: int, count: int) -> Iterator[tuple[str, bytes]]:
    """(label, bytes): first the known bad files, then `count` random mutations of valid files."""
    yield from known_bad().items()
    rng = random.Random(seed)
    files = valid_files(seed)
    names = sorted(files)
    for index in range(count):
        fmt = names[index % len(names)]
        data = files[fmt]
        for _ in range(rng.randint(1, 2)):
            mutation = rng.choice(MUTATIONS)
            data = mutation(data, rng) if data else data
        yield f"{fmt}-{index}", data


# ---- hostile JSON values ------------------------------------------------------------------------

BAD_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e999", str(2 ** 70), str(-(2 ** 70)))
WRONG_TYPES = ('"text"', "true", "null", "[]", "{}", '[1, 2]', '{"a": 1}', '""')


def deep_nesting(levels: int = 1000) -> str:
    return "[" * levels + "]" * levels


def hostile_values(rng: random.Random | None = None) -> list[str]:
    """Raw JSON texts (NaN and Infinity literals included, as json.dumps writes them)."""
    values = [*BAD_NUMBERS, *WRONG_TYPES, deep_nesting(1000), '{"a":' * 500 + "1" + "}" * 500]
    if rng is not None:
        rng.shuffle(values)
    return values
