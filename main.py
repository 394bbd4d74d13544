"""Placeholder: this script is not implemented yet (see the project's open issues)."""
import sys

if __name__ == '__main__':
    sys.exit('main.py is not implemented yet; see README.md for what works today.')
