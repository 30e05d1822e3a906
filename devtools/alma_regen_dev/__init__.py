"""alma-regen's developer tools (distribution alma-regen-dev, devtools/ of the repository).

Not part of the product: installed by `make` for the demo and the tests, never by the
Dockerfile. They import the product (alma_regen); the product never imports them.

    synth.py          `alma-regen synth`: a synthetic, realistic delivery made with real CASA
    casa_scripts/     synth_delivery.py, synth's CASA half (package data, run in a CASA child)
    serve_archive.py  `alma-regen serve-archive`: a local ALMA request handler with faults
    local_s3.py       a local S3 store (SeaweedFS `weed mini`) for the demo and the tests
    demo.py           `alma-regen demo`: the main job end to end on embedded defaults
    commands.py       the subcommands above, declared as `alma_regen.commands` entry points
"""
