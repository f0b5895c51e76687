def preload(parser):
    parser.add_argument("--rewriter-flag", default="off", help="a flag added by the rewriter extension's preload.py")
