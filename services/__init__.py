"""agentmesh's services, and the process-wide settings that must be made before grpc is imported."""

import os

# gRPC C-core writes its own log lines (such as "Got goaway" while `up` stops its own server under its
# own peer channels) straight to fd 2, past our logging. Without GRPC_VERBOSITY, C-core leaves absl's
# minimum level at INFO and only absl's stderr threshold, which applies once absl is initialised, holds
# those lines back: CI saw one reach `up`'s stderr at shutdown. ERROR filters them where they are made.
# An operator who wants C-core's INFO lines still sets GRPC_VERBOSITY=INFO.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
