"""python tools/convert.py --model resnet18 ...: the lmkan-convert command line (lmkan_surgery/convert.py)."""
import sys

from lmkan_surgery.convert import main

sys.exit(main())
