New `[server] access_log`: the SMTP access events as JSON lines in a file of their own, appended by every worker directly, instead of text lines in the twistd log.
