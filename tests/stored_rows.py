"""StoredBytes rows built by hand (what data.decode=gpu's FFCV workers hand over), for the device-decode tests."""
import numpy as np

from resnext_dist.data import device_decode


def rows_of(samples, indices):
    """Rows of (data, mode, height, width) samples, in `indices`' order, each as wide as the largest one."""
    capacity = max(len(s[0]) for s in samples)
    rows = np.zeros((len(indices), device_decode.HEADER.itemsize + capacity), np.uint8)
    for k, i in enumerate(indices):
        data, mode, h, w = samples[i]
        header = np.zeros(1, device_decode.HEADER)
        header[0]["index"], header[0]["length"], header[0]["height"], header[0]["width"] = i, len(data), h, w
        header[0]["mode"] = mode
        rows[k, :device_decode.HEADER.itemsize] = header.view(np.uint8)
        rows[k, device_decode.HEADER.itemsize:device_decode.HEADER.itemsize + len(data)] = data
    return rows
