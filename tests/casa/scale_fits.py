"""Write a copy of a FITS image with every pixel scaled (tests: a deliberately altered product).

Usage: python scale_fits.py IN.fits OUT.fits FACTOR   (CASA's Python)
"""
import os
import sys

sys.path.insert(0, os.environ["ALMA_REGEN_INCLUDE"] + "/casa_scripts")
import casa_boot  # noqa: E402,F401

from casatasks import exportfits, immath  # noqa: E402

src, dst, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])
tmp = dst + ".scaled"
immath(imagename=[src], expr="IM0*%r" % factor, outfile=tmp)
exportfits(imagename=tmp, fitsimage=dst, overwrite=True, dropdeg=False)
