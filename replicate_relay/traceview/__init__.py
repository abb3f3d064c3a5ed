"""`relay trace ID`: a trace waterfall from the local span file or from Cloud Trace.

`spanfile` reads OTLP/JSON lines, `lookup` finds a trace, prediction or job in them, `gcp` reads Cloud
Trace instead, `text` and `page` draw the result, `command` ties them to the command line.
"""
