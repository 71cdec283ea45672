"""Writes the small seed corpus of fuzz/fuzz_png.c (python3 standard library only):
8- and 16-bit grey, grey+alpha, RGB, RGBA, palette, interlaced, and a truncated file."""
import os, struct, zlib

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]

def png(w, h, depth, ctype, rows, interlace=0, extra=b""):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    if interlace:  # 8-bit grey only: the seven Adam7 passes, each scanline with filter 0
        raw = b"".join(b"\x00" + bytes(rows[y][x] for x in range(x0, w, dx))
                       for x0, y0, dx, dy in ADAM7 if x0 < w and y0 < h for y in range(y0, h, dy))
    else:
        raw = b"".join(b"\x00" + r for r in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

out = os.path.join(os.path.dirname(__file__), "corpus", "png")
os.makedirs(out, exist_ok=True)
files = {
    "grey8.png": png(5, 3, 8, 0, [bytes((x * 50 + y) % 256 for x in range(5)) for y in range(3)]),
    "grey16.png": png(4, 2, 16, 0, [b"".join(struct.pack(">H", (x * 20000 + y * 7) % 65536) for x in range(4)) for y in range(2)]),
    "greyalpha8.png": png(3, 3, 8, 4, [bytes([x * 80, 255]) * 1 + bytes([x * 40, 128]) * 2 for x in range(3)]),
    "rgb8.png": png(3, 2, 8, 2, [bytes([10, 200, 30]) * 3, bytes([255, 0, 128]) * 3]),
    "rgba16.png": png(2, 2, 16, 6, [struct.pack(">HHHH", 1000, 2000, 3000, 65535) * 2] * 2),
    "palette.png": png(4, 1, 8, 3, [bytes([0, 1, 2, 1])], extra=chunk(b"PLTE", bytes([0, 0, 0, 128, 128, 128, 255, 255, 255]))),
    "interlaced.png": png(9, 9, 8, 0, [bytes(range(y, y + 9)) for y in range(9)], interlace=1),
}
files["truncated.png"] = files["grey8.png"][:40]
for name, data in files.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
