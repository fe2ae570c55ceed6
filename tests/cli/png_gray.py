"""An 8-bit gray PNG reader for the command-line checks (pin writes its faces so): gray(path) is
the pixel list, row by row."""
import zlib
def gray(path):  # an 8-bit gray PNG: IDAT, zlib, then undo each row's filter
    data = open(path, "rb").read(); i = 8; idat = b""; width = height = 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big"); t = data[i + 4:i + 8]
        if t == b"IHDR": width, height = int.from_bytes(data[i + 8:i + 12], "big"), int.from_bytes(data[i + 12:i + 16], "big")
        if t == b"IDAT": idat += data[i + 8:i + 8 + n]
        i += 12 + n
    raw, out, prev = zlib.decompress(idat), [], [0] * width
    for y in range(height):
        f, row = raw[y * (width + 1)], list(raw[y * (width + 1) + 1:(y + 1) * (width + 1)])
        for x in range(width):
            a, b, c = (row[x - 1] if x else 0), prev[x], (prev[x - 1] if x else 0)
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            pred = [0, a, b, (a + b) // 2, a if pa <= pb and pa <= pc else (b if pb <= pc else c)][f]
            row[x] = (row[x] + pred) & 255
        out += row; prev = row
    return out
