import sys

from speechlm.cli import main

sys.exit(main())
