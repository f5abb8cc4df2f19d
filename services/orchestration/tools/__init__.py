"""Tool execution of runs: HTTP tools that agentmesh calls itself (`http.HttpToolExecutor`)."""
