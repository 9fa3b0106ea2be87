#!/bin/sh
# The html report, drawn by headless Chromium at 1200x1600, must give a
# picture that shows something: a PNG of that size, with at least 1000
# pixels that are not (near) white and at least three colours that each
# fill a sizeable area (the charts' bars, not only anti-aliased text).
#
# usage: render_report.sh REPORT_SAMPLE
# MX_KEEP_RENDER=DIR keeps the page and the screenshot in DIR.
set -eu
sample=$1
chromium=${CHROMIUM:-chromium}
if ! command -v "$chromium" >/dev/null 2>&1; then
    echo "render_report.sh: $chromium not found: the report test renders HTML with it;" \
         "install the Debian package chromium (deploy/install-deps.sh does)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$sample" html >"$tmp/report.html"
if ! timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$tmp/profile" --window-size=1200,1600 \
        --screenshot="$tmp/report.png" "file://$tmp/report.html" >"$tmp/chromium.log" 2>&1; then
    cat "$tmp/chromium.log" >&2
    echo "render_report.sh: chromium failed" >&2
    exit 1
fi
if [ ! -s "$tmp/report.png" ]; then
    cat "$tmp/chromium.log" >&2
    echo "render_report.sh: chromium wrote no screenshot" >&2
    exit 1
fi
if [ -n "${MX_KEEP_RENDER:-}" ]; then
    mkdir -p "$MX_KEEP_RENDER"
    cp "$tmp/report.png" "$tmp/report.html" "$MX_KEEP_RENDER/"
fi
python3 - "$tmp/report.png" <<'PY'
import collections
import struct
import sys
import zlib

WIDTH, HEIGHT = 1200, 1600
MIN_INK = 1000      # pixels darker than near-white
MIN_COLOURS = 3     # colours that each fill at least AREA pixels
AREA = 200


def fail(msg):
    sys.exit("render_report.sh: %s: %s" % (sys.argv[1], msg))


data = open(sys.argv[1], "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    fail("not a PNG")
pos, idat, ihdr = 8, [], None
while pos + 8 <= len(data):
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
        ihdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat.append(body)
    elif kind == b"IEND":
        break
    pos += 12 + length
if ihdr is None:
    fail("no IHDR chunk")
width, height, depth, ctype, _, _, interlace = ihdr
if (width, height) != (WIDTH, HEIGHT):
    fail("%dx%d, not %dx%d" % (width, height, WIDTH, HEIGHT))
if depth != 8 or ctype not in (2, 6) or interlace:
    fail("depth %d colour type %d interlace %d: expected 8-bit RGB(A), not interlaced"
         % (depth, ctype, interlace))
bpp = 3 if ctype == 2 else 4
raw = zlib.decompress(b"".join(idat))
stride = width * bpp
prev = bytearray(stride)
ink = 0
colours = collections.Counter()
for y in range(height):
    start = y * (stride + 1)
    ftype = raw[start]
    line = bytearray(raw[start + 1:start + 1 + stride])
    if ftype == 1:
        for i in range(bpp, stride):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif ftype == 2:
        for i in range(stride):
            line[i] = (line[i] + prev[i]) & 0xFF
    elif ftype == 3:
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif ftype == 4:
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pred) & 0xFF
    elif ftype != 0:
        fail("unknown filter %d in row %d" % (ftype, y))
    for x in range(0, stride, bpp):
        rgb = bytes(line[x:x + 3])
        if min(rgb) < 240:
            ink += 1
            colours[rgb] += 1
    prev = line
big = sum(1 for n in colours.values() if n >= AREA)
if ink < MIN_INK:
    fail("blank: only %d pixels are not white" % ink)
if big < MIN_COLOURS:
    fail("only %d colours fill %d pixels or more: no charts drawn?" % (big, AREA))
print("report.png: %dx%d, %d pixels of ink, %d colours in areas of %d+ pixels"
      % (width, height, ink, big, AREA))
PY
