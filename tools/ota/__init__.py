"""OTA bundles on the host side: `roadside ota build` (bundle.py)."""
