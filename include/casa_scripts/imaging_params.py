"""Imaging parameters derived from the data, as the ALMA pipeline does.

cell: about a fifth of the synthesized beam (lambda / longest baseline);
imsize: the primary beam of a 12-m ALMA dish at the observing frequency,
out to about the 0.2 response level, rounded up to a size FFTs like.
Pure Python: used inside CASA by the synthetic pipeline and native imaging.
"""
import math

C = 299792458.0
DISH_M = 12.0
ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0


def primary_beam_fwhm_arcsec(freq_hz: float, dish_m: float = DISH_M) -> float:
    """ALMA 12-m primary beam FWHM, 1.13 lambda / D (ALMA Technical Handbook)."""
    return 1.13 * C / freq_hz / dish_m * ARCSEC_PER_RAD


def beam_arcsec(freq_hz: float, longest_baseline_m: float) -> float:
    """Synthesized beam estimate: lambda / longest baseline."""
    return C / freq_hz / longest_baseline_m * ARCSEC_PER_RAD


def good_size(n: int) -> int:
    """Smallest even number >= n whose prime factors are only 2, 3 and 5."""
    n = max(int(math.ceil(n)), 8)
    while True:
        if n % 2 == 0:
            m = n
            for p in (2, 3, 5):
                while m % p == 0:
                    m //= p
            if m == 1:
                return n
        n += 1


def derive(freq_hz: float, longest_baseline_m: float, pixels_per_beam: float = 5.0,
           pb_extent: float = 1.5) -> dict:
    """cell (arcsec) and imsize (pixels) for a field observed at freq_hz."""
    beam = beam_arcsec(freq_hz, longest_baseline_m)
    cell = beam / pixels_per_beam
    # Round the cell down to 3 significant figures: readable, and never coarser.
    digits = 2 - int(math.floor(math.log10(cell)))
    cell = math.floor(cell * 10 ** digits) / 10 ** digits
    fov = pb_extent * primary_beam_fwhm_arcsec(freq_hz)
    return {"cell_arcsec": cell, "imsize": good_size(fov / cell), "beam_arcsec": beam,
            "pb_fwhm_arcsec": primary_beam_fwhm_arcsec(freq_hz)}
