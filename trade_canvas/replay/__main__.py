"""``python -m trade_canvas.replay``: run the replay exchange."""

from trade_canvas.replay.server import main

raise SystemExit(main())
