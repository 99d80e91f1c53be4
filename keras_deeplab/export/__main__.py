"""`python -m keras_deeplab.export`: `deeplab export`, and `... verify VERSION_DIR`, which the export's checks run in a
fresh process."""
import sys

from keras_deeplab.export.cli import main

sys.exit(main())
