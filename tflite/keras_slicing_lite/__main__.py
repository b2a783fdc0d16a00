import sys

from keras_slicing_lite.cli import main

sys.exit(main())
