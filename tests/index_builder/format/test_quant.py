"""int8 codes with per-vector scales: error bound, zero vectors, shapes; one decoder for both
storages, into a fresh array or a given buffer."""

import numpy as np
import pytest

from index_builder.format import quant
from index_builder.format.quant import INT8_MAX, dequantize, quantize_int8


def _normalised(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(50, 16), (6, 36, 32), (7,), (2, 3, 4, 8)])
def test_round_trip_error_is_at_most_half_a_step(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    codes, scales = quantize_int8(x)
    assert codes.shape == x.shape and codes.dtype == np.int8
    assert scales.shape == x.shape[:-1] and scales.dtype == np.float32
    error = np.abs(dequantize(codes, scales) - x)
    bound = scales[..., None] / 2 * (1 + 1e-5) + 1e-12  # float32 rounding slack
    assert (error <= bound).all()


def test_scale_is_max_abs_over_127_and_extremes_hit_the_range():
    x = np.array([[0.5, -1.0, 0.25], [2.0, 1.0, -2.0]], dtype=np.float32)
    codes, scales = quantize_int8(x)
    np.testing.assert_allclose(scales, [1.0 / INT8_MAX, 2.0 / INT8_MAX], rtol=1e-7)
    assert codes[0, 1] == -INT8_MAX and codes[1, 0] == INT8_MAX and codes[1, 2] == -INT8_MAX
    assert codes.min() >= -INT8_MAX  # -128 is never used


def test_zero_vectors_get_zero_scale_and_codes():
    x = np.zeros((3, 4, 8), dtype=np.float32)
    x[1, 2] = np.linspace(-1, 1, 8)
    codes, scales = quantize_int8(x)
    assert scales[0].tolist() == [0.0] * 4 and (codes[0] == 0).all()
    assert scales[1, 2] > 0
    decoded = dequantize(codes, scales)
    assert (decoded[0] == 0).all() and np.isfinite(decoded).all()


def test_inner_products_of_normalised_vectors_are_preserved():
    rng = np.random.default_rng(1)
    a, b = _normalised(rng, (64, 256)), _normalised(rng, (48, 256))
    a_hat = dequantize(*quantize_int8(a))
    b_hat = dequantize(*quantize_int8(b))
    assert np.abs(a_hat @ b_hat.T - a @ b.T).max() < 1e-2


def test_blocks_give_the_same_result_as_one_pass(monkeypatch):
    x = np.random.default_rng(2).standard_normal((5, 7, 16)).astype(np.float32)
    expected = quantize_int8(x)
    monkeypatch.setattr(quant, "QUANT_BLOCK_VALUES", 64)  # 4 rows of 16: 35 rows -> 9 blocks
    codes, scales = quantize_int8(x)
    np.testing.assert_array_equal(codes, expected[0])
    np.testing.assert_array_equal(scales, expected[1])


def test_codes_round_half_to_even_like_a_numpy_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 64))
    x[0, :4] = [127.0, 0.5, 1.5, -2.5]  # scale 1: exact ties at .5
    for dtype in (np.float32, np.float64, np.float16):
        rows = x.astype(dtype)
        work = rows.astype(np.float64 if dtype == np.float64 else np.float32)
        scale = (np.abs(work).max(axis=1) / 127).astype(np.float32)
        reference = np.clip(np.rint(work / scale.astype(work.dtype)[:, None]), -127, 127)
        codes, scales = quantize_int8(rows)
        np.testing.assert_array_equal(scales, scale)
        np.testing.assert_array_equal(codes, reference.astype(np.int8))
    assert quantize_int8(x[:1])[0][0, :4].tolist() == [127, 0, 2, -2]


def test_float64_and_memmap_inputs(tmp_path):
    x = np.random.default_rng(3).standard_normal((10, 4, 8))
    path = tmp_path / "x.npy"
    np.save(path, x.astype(np.float32))
    codes, scales = quantize_int8(np.load(path, mmap_mode="r"))
    assert codes.shape == (10, 4, 8) and scales.shape == (10, 4)
    codes64, scales64 = quantize_int8(x)
    assert scales64.dtype == np.float32
    assert (np.abs(dequantize(codes64, scales64) - x) <= scales64[..., None] + 1e-6).all()


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_decoding_into_a_buffer_equals_a_fresh_decode(storage):
    x = np.random.default_rng(4).standard_normal((3, 36, 32)).astype(np.float32)
    if storage == "int8":
        codes, scales = quantize_int8(x)
    else:
        codes, scales = x.astype(np.float16), None
    fresh = dequantize(codes, scales)
    assert fresh.dtype == np.float32 and fresh.shape == (3, 36, 32)
    buffer = np.full((3, 36, 32), np.nan, np.float32)
    assert dequantize(codes, scales, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, fresh)
    expected = codes.astype(np.float32) * (1 if scales is None else scales[..., None])
    np.testing.assert_array_equal(fresh, expected)


def test_read_only_memory_maps_decode(tmp_path):
    codes = np.random.default_rng(5).standard_normal((4, 8)).astype(np.float16)
    np.save(tmp_path / "c.npy", codes)
    mapped = np.load(tmp_path / "c.npy", mmap_mode="r")
    np.testing.assert_array_equal(dequantize(mapped), codes.astype(np.float32))


@pytest.mark.parametrize(
    "vectors, message",
    [
        (np.array([[1.0, np.nan]]), "NaN or infinite"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.zeros((3, 0)), "d >= 1"),
        (np.array(["a", "b"]), "real numbers"),
        (np.array([[1 + 1j, 0]]), "real numbers"),
    ],
)
def test_quantize_rejects_bad_input(vectors, message):
    with pytest.raises(ValueError, match=message):
        quantize_int8(vectors)


def test_dequantize_rejects_bad_codes_and_scales():
    codes, scales = quantize_int8(np.ones((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="int8"):
        dequantize(codes.astype(np.int16), scales)
    with pytest.raises(ValueError, match="shape"):
        dequantize(codes, scales[:, :2])
    np.testing.assert_array_equal(dequantize(codes), codes.astype(np.float32))  # unscaled
