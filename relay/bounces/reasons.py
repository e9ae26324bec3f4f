"""Why a delivery failed: diagnostic text + RFC 3463 status -> reason, hard/soft kind, status code.

The reason vocabulary is the one widely used by bounce processors (userunknown, mailboxfull, hostunknown,
filtered, blocked, spamdetected, expired, ...). Classification goes from the most specific evidence to the
least: phrases that MTAs use for a cause (generic wording, many MTAs share it), then the enhanced status
code (RFC 3463 / RFC 7505 / RFC 7372 subjects), then the reply code class.

``kind`` is ``hard`` only when the address itself is permanently unusable (unknown user or host, moved,
domain accepts no mail); a 5xx for spam, policy or size is ``soft``: the address may work tomorrow.

When a report carries no enhanced status code, ``pseudo_status`` derives one of the form ``X.0.9NN`` from
the reason, so every recipient has a class digit and a stable code per cause (the convention of the
Sisimai project's bounce classifier).
"""

from __future__ import annotations

import functools
import re

HARD_REASONS = {"userunknown", "hostunknown", "hasmoved", "notaccept"}

# The reporting MTA stopped retrying (or will retry): when the error is, not what it is. The words of the
# last error, when the notice quotes them, say what it is ("Unable to contact LDAP server ... I'm not going to
# try again" is a system error that lasted).
_GAVE_UP = (r"in the queue too long|too long in (?:the )?queue|not going to try again|"
            r"retry time(?:out)? (?:not reached|exceeded)|(?:message|queue|envelope|"
            r"delivery time)[ .]expired|"
            r"will (?:be )?retr(?:y|ied)|did not accept our requests to connect|"
            r"(?:delivery|retry) (?:time|period) (?:has )?(?:expired|exceeded)|failing for a long time|"
            r"delivery failed \d+ attempts|still undelivered after|was aborted after \d")
# the phrases qmail / Exim append to the quoted last error when they give up
# (or never got a connection: the host refused it or could not be reached until the retry limit)
_CONNECT_FAILED = re.compile(r"(?:unable|could not|couldn't|failed) to connect")
_TIMED_OUT = re.compile(r"timed? ?out|timeout|connection refused|" + _CONNECT_FAILED.pattern +
                        r"|(?:host|network) (?:is )?unreachable|no route to host")
_GAVE_UP_RE = re.compile(r"i'?m not going to try again|(?:this message has been )?in the queue too long|"
                         r"retry time(?:out)? exceeded|"
                         # Exchange Online: "550 5.4.312 Message expired, DNS query failed"
                         r"\b(?:message|envelope) expired(?=[,;:] *\w)")

# Ordered: the first matching rule wins. Patterns are generic phrases, lower-cased input.
_RULES: list[tuple[str, str]] = [
    ("virusdetected", r"\bvirus\b|malware|infected (?:attachment|message)|contains? (?:a )?(?:virus|worm)"),
    # an address on a blocklist is the envelope sender's, not the sending host's
    ("rejected", r"\baddress (?:that |which )?(?:has been|is|was) (?:black|block) ?listed|"
                 r"sender (?:address )?(?:rejected|refused|denied|verify failed|verification failed|invalid|"
                 r"unknown)|domain of sender|sender (?:address )?domain .{0,40}(?:not exist|unknown|invalid|"
                 r"not resolv)|sender was rejected|rejected sender|invalid sender|unknown sender|bad sender|"
                 r"mail from .{0,60}(?:rejected|refused|denied)|not (?:a )?registered gateway user|"
                 r"purported responsible address|\bfrom:? domain (?:is )?(?:invalid|unknown|not)"),
    ("expired", _GAVE_UP),
    ("userunknown", r"recipient address rejected: access denied|that you tried to reach does not exist"),
    ("syntaxerror", r"malformed address|command parameter not implemented|command not implemented"),
    ("notaccept", r"not accepting network messages"),
    ("blocked", r"client host (?:\S+ )?(?:blocked|rejected)|ip address blacklisted|refused to talk to me|"
                r"invalid ip for sending|"
                r"use (?:the )?(?:smtp|mail|outgoing) server of your (?:isp|provider)|"
                r"use your (?:isp|provider)'?s? (?:smtp|mail|outgoing|relay)|"
                r"messages from (?:\S+ )?weren.t sent|part of (?:their|your) network is on our block ?list|"
                r"(?:your|sender|source|client|sending) ip (?:address )?(?:\S+ )?(?:is |was |has been )?"
                r"(?:blocked|blacklisted|listed|banned|rejected)"),
    ("mesgtoobig", r"message (?:is |was )?too (?:big|large)|message size (?:exceeds|limit|too)|"
                   r"exceeds? (?:the )?(?:maximum |max )?(?:message |allowed )?size|size limit|"
                   r"message length exceeds|mail size|\bline limit exceeded"),
    ("norelaying", r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|not allowed)|"
                   r"not (?:permitted|allowed|authori[sz]ed|configured) to relay|unable to relay|no relaying|"
                   r"we do not relay|relay not permitted|relaying (?:mail )?(?:to .{0,80} )?(?:is )?not|"
                   # a sending service (Amazon SES) refusing a From it has not verified for this account
                   r"email address is not verified|identities failed the check"),
    ("requireptr", r"reverse (?:dns|lookup|hostname)|\bptr\b|\brdns\b|"
                   r"(?:cannot|can't|could not|unable to) (?:find|resolve) your (?:host ?name|ip)|"
                   r"(?:client|your) host ?name .{0,40}(?:not|unknown|doesn't)|dns reverse|"
                   r"no (?:reverse|ptr)|ip name lookup failed|mismatch(?:es)? (?:the )?(?:client|your) ip|"
                   r"unverif(?:y|i)able (?:sending |client )?(?:ip|host)"),
    ("authfailure", r"unauthenticated (?:e-?mail|message)|\bspf\b|\bdkim\b|\bdmarc\b|sender policy framework|"
                    r"sender (?:domain )?authenticat\w* fail|authentication (?:check )?fail|"
                    r"(?:not have|without) authentication information|"
                    r"fails? to pass (?:\w+ )?authentication"),
    ("toomanyconn", r"too many (?:connections|simultaneous|concurrent|sessions|recipients)|"
                    r"connection rate limit|connection limit|too many hosts"),
    ("badreputation", r"\breputation\b|poor(?:ly)? (?:sender )?(?:rated|rating)|user complaints"),
    ("speeding", r"rate limit|too many (?:messages|emails|mails)|sending (?:rate|quota)|"
                 r"(?:messages|emails) per (?:hour|minute|day)"),
    ("networkerror", r"not found, try again|temporary (?:dns|name ?server|lookup) (?:failure|error)|"
                     r"name ?server.{0,30}(?:timeout|time out|failure|not responding)|"
                     r"host name lookup failure|"
                     r"lost connection|name server reply|network error|dns query (?:failed|failure)"),
    ("notaccept", r"does not accept (?:e-?)?mail|accepts? no (?:e-?)?mail|null mx|"
                  r"not accepting (?:any )?(?:e-?)?mail|doesn't accept mail|no mx (?:record )?(?:found )?for|"
                  r"(?:couldn't|could not|can't|cannot) find a mail exchanger|indicated no smtp service|"
                  r"no (?:mx|mail exchanger|valid mx)(?: or a)? (?:record|host)s?"),
    ("hasmoved", r"has moved|address (?:has )?changed|moved to (?:a )?new|no longer (?:at|with) "),
    ("systemfull", r"insufficient (?:system )?(?:disk )?(?:storage|space)|disk full|out of disk|"
                   r"system (?:storage|disk) (?:is )?full"),
    ("mailboxfull", r"mail ?box (?:is )?(?:full|over ?quota|exceeded)|over ?quota|quota (?:exceeded|full)|"
                    r"exceed\w* (?:\w+ ){0,3}quota|(?:storage|disk|mailbox) (?:space |size )?(?:quota|limit)"
                    r"(?: exceeded)?|account is full|user is over|is full\b|full mailbox|"
                    r"not enough (?:storage|space)|"
                    r"mailbox size limit|would exceed"),
    ("suspend", r"(?:account|mailbox|user|address|recipient)(?: has been| is|'s account is)? "
                r"(?:temporarily |currently |been )?(?:disabled|suspended|deactivated|inactive|frozen|"
                r"locked|expired|blocked by the owner)|(?:suspended|disabled|inactive|deactivated) "
                r"(?:account|mailbox|user|recipient)|not (?:an )?active (?:account|mailbox|user)"),
    ("hostunknown", r"host (?:or domain name )?(?:not found|unknown)|unknown host|"
                    r"dns lookup failure: host \S+ not found|"
                    r"domain (?:name )?(?:does not exist|not found|unknown|not exist)|no such domain|"
                    r"unrouteable (?:mail )?domain|unrouteable address|name or service not known|"
                    r"\bnxdomain\b|"
                    r"(?:couldn't|could not|can't|cannot) find any host|no (?:mx|mail exchanger|valid mx)|"
                    r"host name lookup fail|domain .{0,60}(?:has no|without) (?:mx|mail)|"
                    r"dns (?:error|lookup).{0,40}(?:domain|not exist|nxdomain)|"
                    r"recipient domain .{0,40}invalid|"
                    r"unknown domain|invalid domain|domain (?:is )?not (?:exist|valid|reachable)|"
                    r"^[245]\d\d[ -](?:[a-z0-9-]+\.)+[a-z]{2,} does not exist"),
    ("userunknown", r"user(?:name)? (?:is )?unknown|unknown (?:user|recipient|local ?part|address|mailbox|"
                    r"e-?mail)|no such (?:user|mailbox|recipient|address|account|person|local user)|"
                    r"(?:user|recipient|mailbox|address|account|addressee)s? (?:\S+ )?(?:was |is )?not "
                    r"(?:found|known|exist|valid|listed)|"
                    r"(?:user|recipient|mailbox|address|account|"
                    r"e-?mail address)(?: \S+)? does(?: not|n't|n.t) "
                    r"exist|invalid (?:recipient|mailbox|user|address|e-?mail)|"
                    r"(?:recipient|address|mailbox|user) (?:address )?(?:is )?(?:invalid|unknown|"
                    r"unavailable)|"
                    r"undeliverable address|bad destination mailbox|"
                    r"not a valid (?:user|mailbox|recipient|address)|mailbox (?:does not exist|not found|"
                    r"unavailable|is unavailable|not available|not exist)|no mailbox|"
                    r"(?:doesn't|does not) have an? (?:\S+ )?account|addressee unknown|"
                    r"recipnotfound|recipientnotfound|not listed in|wasn.t found at|"
                    r"no (?:such )?account|recipient invalid|invalid .{0,20}(?:userid|user id)|"
                    r"address (?:could ?n[o']t|cannot|can't) be found|"
                    r"email address .{0,40}(?:not exist|not found|invalid)|user not found|"
                    r"is not a known user|"
                    # de, fr, es, pt, it, nl
                    r"benutzer unbekannt|unbekannte[rn]? (?:empf|benutzer|adresse)|empf\w+ unbekannt|"
                    r"utilisateur inconnu|destinataire inconnu|"
                    r"adresse (?:destinataire )?(?:inconnue|invalide)|"
                    r"usuario (?:desconocido|no existe)|destinatario desconocido|usu[aá]rio desconhecido|"
                    r"utente (?:sconosciuto|inesistente)|onbekende (?:gebruiker|ontvanger)|"
                    # ja (Lotus Domino / Notes: "not found in the directory", "not in the directory list")
                    r"ディレクトリ(?:には見つかりません|のリストにありません)"),
    ("securityerror", r"starttls|\btls\b.{0,30}required|must issue a|encryption required|"
                      r"authentication (?:is )?required|(?:must|need to) authenticate|"
                      r"submission (?:port|service)|certificate|unauthenticated sender|"
                      r"(?:does not|doesn't) support (?:start)?tls|tls (?:is )?not (?:available|supported)"),
    ("spamdetected", r"message content rejected|\buribl\b|\bsurbl\b|blacklisted (?:url|link)|"
                     r"\bspam\b|junk mail|unsolicited|bulk (?:e-?)?mail|\buce\b|"
                     r"content (?:filter|was|is) .{0,40}(?:rejected|spam)|classified as|"
                     r"message (?:content )?(?:rejected|refused) .{0,40}(?:content|spam)"),
    ("blocked", r"blocked|block ?list|black ?list|\brbl\b|\bdnsbl\b|spamhaus|spamcop|barracuda|"
                r"listed (?:at|in|on|by)|(?:your|client|sender) ip|ip (?:address )?(?:\S+ )?(?:is |was )?"
                r"(?:rejected|refused|not allowed|banned)|banned|"
                r"(?:client|connection) (?:host )?(?:\S+ )?(?:rejected|refused)|"
                r"(?:not|never) (?:accept|allow)\w* (?:mail|connections?|messages?) from|"
                r"not accepting (?:any )?connections|service refused|service refuse\b"),
    ("filtered", r"\bfilter(?:ed|ing)?\b|refused by (?:the )?(?:recipient|user)|user refuses|"
                 r"does not (?:want|wish) to receive|recipient (?:has )?(?:rejected|refused|blocked) "
                 r"(?:your|this|the)"),
    ("rejected", r"sender (?:address )?(?:rejected|refused|denied|not allowed|invalid|unknown|verify|"
                 r"verification)|domain of sender|(?:sender|from) (?:address )?domain (?:\S+ )?(?:not|does)|"
                 r"rejected sender|bad sender|invalid sender|mail from .{0,60}(?:rejected|refused|denied)|"
                 r"unknown sender|sender .{0,40}(?:does not exist|not exist)|return path"),
    ("policyviolation", r"\bpolicy\b|policies|prohibited|not (?:allowed|permitted) by|"
                        r"header (?:error|invalid|rejected)|message (?:rejected|refused) (?:due|because)"),
    ("onhold", r"\bon hold\b"),
    ("contenterror", r"media error|content (?:rejected|error|not (?:allowed|accepted))|"
                 r"invalid (?:mime|header|content)|"
                     r"(?:mime|header|headers|content|character set|charset) (?:error|invalid|malformed)|"
                     r"illegal (?:header|character)|8-?bit|too many headers"),
    ("mailererror", r"mailer error|procmail|command (?:failed|died)|exit (?:code|status)|"
                    r"unknown mailer|local delivery fail|pipe to|\|\s*/"),
    ("syntaxerror", r"syntax error|command (?:unrecognized|not recognized)|bad sequence|"
                    r"unrecognized command|line too long"),
    ("networkerror", r"connection (?:refused|reset|closed|dropped|lost)|network (?:is )?unreachable|"
                     r"no route to host|lost connection|could not connect|unable to connect|"
                     r"(?:failed|unable) to establish|host (?:is )?unreachable|"
                     r"mail (?:forwarding )?loop|routing loop|loops back|too many hops"),
    ("expired", r"retry time(?:out)? (?:not reached|exceeded)|(?:message|delivery|queue) (?:time )?expired|"
                r"could not be delivered (?:within|for)|give up|gave up|giving up|timed? ?out|timeout|"
                r"too long in (?:the )?queue|delivery (?:time|period) (?:has )?expired|"
                r"has not been delivered|not (?:yet )?been delivered|delay(?:ed)?\b|"
                r"unable to deliver .{0,40}(?:days|hours)|maximum time|\bexpired\b|"
                # the host stayed unreachable for the whole retry period (Zoho's final report)
                r"host not reachable|(?:was|were|has|have) not (?:been )?delivered within"),
    ("systemerror", r"system (?:error|config)|internal (?:server )?error|configuration error|"
                    r"server error|local error|temporary local (?:problem|failure|error)|"
                    r"resources? (?:temporarily )?unavailable|"
                    r"service (?:is )?(?:temporarily |currently )?unavailable|"
                    r"(?:out of|insufficient) (?:memory|resources)|transaction failed"),
]
# Postfix's "Recipient address rejected: ..." prefixes any refusal at RCPT: alone it means an unknown
# address, but it yields to the code (and to any words after it) when they say more
_WEAK_UNKNOWN = re.compile(r"(?:address|recipient) rejected|no valid recipients? (?:for|in)\b")
_COMPILED = [(reason, re.compile(rx)) for reason, rx in _RULES]

# Phrases so specific that they win over the enhanced status code (servers often send a generic or wrong
# code, e.g. "5.1.1 ... over quota"): the words describe the cause, the code only its class.
_STRONG = [(reason, re.compile(rx)) for reason, rx in [
    ("notcompliantrfc", r"not rfc ?5322 compliant|multiple (?:addresses in from|\w+ headers)|"
                        r"duplicate header|"
                        r"multiple \w+ header"),
    ("systemfull", r"insufficient (?:system )?(?:disk )?(?:storage|space)|disk full|out of disk|"
                   r"system (?:storage|disk) (?:is )?full"),
    ("mailboxfull", r"mail ?box (?:is )?full|over ?quota|quota exceeded|mailbox exceeds|"
                    r"postfach (?:ist )?voll|"
                    r"bo[iî]te (?:aux lettres )?pleine|buz[oó]n (?:est[aá] )?lleno|caixa postal cheia|"
                    r"casella (?:di posta )?piena|mailbox vol"),
    ("policyviolation", r"for policy reasons|protocol violation|"
                        r"content presents a potential(?: security issue)?"),
    ("spamdetected", r"(?:rejected|blocked|refused) (?:due to|because of) spam|spam classification|"
                     r"classified as spam"),
    ("speeding", r"receiving mail at a rate|too many recipients this (?:hour|day)|"
                 r"sent to too many recipients"),
    ("toomanyconn", r"(?:ip|connection) frequency limited"),
    ("suspend", r"temporar(?:y|ily) locked|recipient account is (?:blocked|locked)"),
    ("mailererror", r"^procmail: "),          # the local delivery agent failed, whatever it says next
    # Yahoo answers a nonexistent mailbox at the end of DATA: "554 delivery error: dd This user doesn't
    # have a yahoo.com account" (still the address, not the content)
    ("userunknown", r"(?:doesn't|does not) have an? \S+ account"),
]]

# RFC 3463 (and later registrations) subject.detail -> reason, used when no phrase matched.
_BY_STATUS = {
    "1.1": "userunknown", "1.2": "hostunknown", "1.3": "userunknown", "1.4": "userunknown",
    "1.5": "userunknown", "1.6": "hasmoved", "1.7": "rejected", "1.8": "rejected", "1.9": "systemerror",
    "1.10": "notaccept", "2.0": "userunknown", "2.1": "suspend", "2.2": "mailboxfull",
    "2.3": "exceedlimit", "2.4": "systemerror", "3.0": "systemerror", "3.1": "systemfull",
    "3.2": "notaccept", "3.3": "systemerror", "3.4": "mesgtoobig", "3.5": "systemerror",
    "4.0": "networkerror", "4.1": "networkerror", "4.2": "networkerror", "4.3": "systemerror",
    "4.4": "hostunknown", "4.5": "toomanyconn", "4.6": "networkerror", "4.7": "expired",
    "5.0": "syntaxerror", "5.1": "syntaxerror", "5.2": "syntaxerror", "5.3": "exceedlimit",
    "5.4": "syntaxerror", "5.5": "syntaxerror", "5.6": "syntaxerror",
    "6.0": "contenterror", "6.1": "contenterror", "6.2": "contenterror", "6.3": "contenterror",
    "6.4": "contenterror", "6.5": "contenterror", "6.6": "contenterror", "6.7": "contenterror",
    "6.8": "contenterror", "6.9": "contenterror", "6.10": "contenterror",
    "7.0": "securityerror", "7.1": "rejected", "7.2": "filtered", "7.3": "securityerror",
    "7.4": "securityerror", "7.5": "securityerror", "7.6": "securityerror", "7.7": "securityerror",
    "7.8": "authfailure", "7.9": "securityerror", "7.10": "securityerror", "7.11": "securityerror",
    "7.12": "authfailure", "7.13": "suspend", "7.14": "securityerror", "7.15": "securityerror",
    "7.16": "policyviolation", "7.17": "policyviolation", "7.18": "policyviolation",
    "7.19": "policyviolation", "7.20": "authfailure", "7.21": "authfailure", "7.22": "authfailure",
    "7.23": "authfailure", "7.24": "authfailure", "7.25": "requireptr", "7.26": "authfailure",
    "7.27": "notaccept", "7.28": "spamdetected", "7.29": "authfailure", "7.30": "authfailure",
}
# Codes precise enough to win over phrases (the phrase may describe a side detail).
_DECISIVE = {"1.1", "1.2", "1.6", "1.7", "1.8", "2.2", "2.3", "3.4", "7.25", "7.26", "7.23"}
_COMMAND = re.compile(r"in reply to (?:the )?(rcpt to|mail from|end of data|data|helo|ehlo)\b|"
                      r"after (rcpt to|mail from|end of data|data|initial connection|helo|ehlo)\b|"
                      r">>> (rcpt to|mail from|data|helo|ehlo)\b|"
                      # qmail: "Connected to X but sender was rejected" / "... but my name was rejected" /
                      # "X does not like recipient" / "X failed after I sent the message" / "greeting failed"
                      r"(sender) was rejected|my (name) was rejected|does not like (recipient)|"
                      r"(failed after i sent the message|failed on data command)|but (greeting) failed", re.I)
# a block at MAIL FROM that names the client (its address, a blocklist) is about the sending host, not the
# sender
_NAMES_CLIENT = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.]*\d)|block ?list|black ?list|\brbl\b|"
                           r"\bdnsbl\b|spamhaus|spamcop|barracuda|client host|"
                           r"(?:your|sender|sending|source) ip|your (?:isp|provider)")
# "5.1.0 - Unknown address error 550-'5.7.1 <a@b>... Access denied'": a relay (Amazon SES and the like)
# prefixes the remote server's reply with its own enhanced code and a summary
# (the quoted reply may carry no enhanced code: "5.3.0 - Other mail system problem 550-'Unknown user a@b'")
_WRAPPED = re.compile(r"^\s*[245]\.\d{1,3}\.\d{1,3}\s+-?\s*[^'\"]{0,80}?\s"
                      r"([245]\d\d[ -](?:['\"]?[245]\.\d{1,3}\.\d{1,3}\b|['\"]).*)$", re.S)
_ANY_STATUS = re.compile(r"(?<![\d.])[245]\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_REMOTE_REPLY = re.compile(r"(?<![\d.#:-])[45]\d\d(?=[ -])")
# codes that prove no unknown address: generic ones, and X.2.1 ("mailbox disabled, not accepting messages":
# by its code the mailbox exists)
_UNPROVING_SUBS = ("0.0", "2.1")
_RCPT_WORD = re.compile(r"\bRCPT(?:\b|_)")
_NO_VALID = re.compile(r"<<<\s*5\d\d\b.{0,40}no valid recipients", re.I)
_CMD_NAMES = {"rcpt to": "RCPT", "mail from": "MAIL", "end of data": "DATA", "data": "DATA", "helo": "HELO",
              "ehlo": "HELO", "initial connection": "CONN", "sender": "MAIL", "name": "HELO",
              "recipient": "RCPT", "failed after i sent the message": "DATA",
              "failed on data command": "DATA", "greeting": "CONN"}


def smtp_command(text: str) -> str:
    """The SMTP command a rejection answered (RCPT, MAIL, DATA, HELO, CONN), or ''."""
    text = (text or "")[:8000]
    if ">>>" in text:
        # a session transcript: the command sent just before the first error reply
        last = ""
        lines = text.split("\n")
        for i, line in enumerate(lines):
            line = line.strip()
            if line.startswith(">>>"):
                last = line[3:].strip().lower()
            elif re.match(r"<<<\s*[45]\d\d", line) and last:
                name = next((n for key, n in _CMD_NAMES.items() if last.startswith(key)), "")
                if name == "DATA" and _NO_VALID.search(" ".join(lines[i + 1:i + 4])):
                    return "RCPT"   # pipelined: the RCPT replies come after ">>> DATA", DATA's own follows
                return name
    m = _COMMAND.search(text)
    if not m:
        # "SMTP:RCPT host ...", "[RCPT_TO]", "after RCPT command", "said for RCPT TO response"
        return "RCPT" if _RCPT_WORD.search(text) else ""
    name = next(g for g in m.groups() if g)
    return _CMD_NAMES.get(name.lower(), "")

_PSEUDO = {
    "undefined": 900, "onhold": 901, "norelaying": 909, "filtered": 910, "userunknown": 911,
    "hostunknown": 912, "hasmoved": 916, "rejected": 918, "suspend": 921, "mailboxfull": 922,
    "exceedlimit": 923, "systemerror": 930, "systemfull": 931, "notaccept": 932, "mesgtoobig": 934,
    "mailererror": 939, "networkerror": 944, "toomanyconn": 945, "expired": 947, "securityerror": 970,
    "blocked": 971, "policyviolation": 972, "requireptr": 973, "authfailure": 976, "badreputation": 977,
    "speeding": 942, "ratelimited": 942, "notcompliantrfc": 974, "spamdetected": 980, "virusdetected": 980,
    "contenterror": 960,
    "syntaxerror": 902,
}


# Orange / La Poste (wanadoo.fr, orange.fr, laposte.net) end each refusal with their own code, e.g.
# "Mail rejete. Mail rejected. OFR_506 [506]", "Invalid recipient. LPN007_416": the receiver's own
# classification, more precise than its wording or its enhanced code (codes from Orange's postmaster
# documentation; codes that only say "try later" are left to the text).
_ORANGE_CODE = re.compile(r"\b(?:lpnaaa|lpn|ofr|ouk)(?:\d{3})?[_-](\d{3})\b", re.I)
_ORANGE_REASONS = {
    "101": "blocked", "102": "blocked", "103": "blocked", "104": "toomanyconn", "305": "securityerror",
    "401": "authfailure", "402": "securityerror", "403": "rejected", "405": "rejected", "415": "rejected",
    "416": "userunknown", "417": "mailboxfull", "420": "suspend", "421": "rejected", "426": "suspend",
    "505": "systemerror", "506": "spamdetected", "510": "blocked", "514": "mesgtoobig", "517": "authfailure",
    "630": "policyviolation", "999": "blocked",
}


def by_provider_code(diagnostic: str) -> str:
    """The reason a receiver states with its own code in the reply (Orange / La Poste), or ''."""
    m = _ORANGE_CODE.search((diagnostic or "")[:2000])
    return _ORANGE_REASONS.get(m.group(1), "") if m else ""


# A reporting MTA's own category of the reply in its DSN (PowerMTA's X-PowerMTA-BounceCategory, named in
# its documentation); categories that only say "other" are left out
MTA_CATEGORIES = {
    "bad-mailbox": "userunknown", "bad-domain": "hostunknown", "inactive-mailbox": "suspend",
    "quota-issues": "mailboxfull", "spam-related": "spamdetected", "policy-related": "policyviolation",
    "virus-related": "virusdetected", "content-related": "contenterror", "invalid-sender": "rejected",
    "message-expired": "expired", "no-answer-from-host": "networkerror", "bad-connection": "networkerror",
    "relaying-issues": "norelaying", "routing-errors": "systemerror", "bad-configuration": "systemerror",
}


def by_provider(address: str) -> str:
    """Providers whose notices say nothing machine-readable but whose meaning is fixed."""
    domain = address.rpartition("@")[2]
    if domain == "googlegroups.com" or domain.startswith("googlegroups."):
        return "rejected"      # a group refusing a post: the sender may not post there
    return ""


@functools.lru_cache(maxsize=512)
def by_text(text: str) -> str:
    return by_words(text) or ("userunknown" if _WEAK_UNKNOWN.search((text or "").lower()[:4000]) else "")


@functools.lru_cache(maxsize=512)
def by_words(text: str) -> str:
    """The reason of the first matching phrase rule, the weak "address rejected" prefix left out."""
    low = (text or "").lower()[:4000]
    for reason, rx in _COMPILED:
        if rx.search(low):
            return reason
    return ""


# Where the class digit changes the meaning: a temporary "not authorized" is a block of the sending host
# (greylisting, reputation), a permanent one a security refusal of the message (RFC 3463 X.7.1).
_BY_FULL_STATUS = {"4.7.1": "blocked", "5.7.1": "securityerror"}


def by_status(status: str) -> str:
    if not status or status[0] not in "45":
        return ""
    return _BY_FULL_STATUS.get(status) or _BY_STATUS.get(status.split(".", 1)[1], "")


def _words(diagnostic: str, status: str) -> str:
    """The reason the words give; an expiry notice that quotes the last error is that error."""
    reason = by_words(diagnostic)
    low = (diagnostic or "").lower()[:4000]
    if reason == "networkerror" and status[1:] == ".4.7" and _CONNECT_FAILED.search(low):
        # X.4.7 "delivery time expired" and only that no connection succeeded: the attempts went on until
        # the queue lifetime ran out (no host ever answered; a refusal or a DNS failure would say more)
        return "expired"
    if reason == "expired":
        if _GAVE_UP_RE.search(low):
            rest = _GAVE_UP_RE.sub(" ", low)
            if _TIMED_OUT.search(rest):
                return reason   # the attempts kept timing out until the queue lifetime ran out
            cause = by_text(rest)
            # "try again later" words of the quoted error are no cause once the MTA gave up
            cause = (cause if cause not in ("expired", "systemerror") else "") or by_status(status)
            if cause:
                return cause
    return reason


def classify(diagnostic: str, status: str, action: str = "", context: str = "", command: str = "") -> str:
    """The reason for one recipient. ``context`` is the notice text around it (weaker evidence);
    ``command`` the SMTP command the reply answered when the caller knows it (RCPT, MAIL, DATA, HELO, CONN:
    our own delivery attempts), which wins over what the text says."""
    sub = status.split(".", 1)[1] if status and "." in status else ""
    wrapped = _WRAPPED.match(diagnostic or "")
    if wrapped:
        diagnostic = wrapped.group(1)   # a relay's own summary around the remote reply: the reply decides
        if not _ANY_STATUS.search(diagnostic[:40]):
            sub = ""                    # ... and the relay's code is no evidence about the address
    low = (diagnostic or "").lower()[:4000]
    strong = by_provider_code(low) or next((reason for reason, rx in _STRONG if rx.search(low)), "")
    worded = True
    if strong:
        reason = strong
    elif sub in _DECISIVE and status[0] in "45":
        reason = _BY_STATUS[sub]
    else:
        reason = _words(diagnostic, status)
        worded = bool(reason)
        reason = (reason or by_status(status) or ("userunknown" if _WEAK_UNKNOWN.search(low) else "")
                  or by_text(context) or "")
    command = command or smtp_command(diagnostic) or smtp_command(context)
    if not reason:
        reason = _unexplained(diagnostic, action, command)
    if reason == "spamdetected" and sub.startswith("6.") and not _SPAM_NAMED.search(low):
        return "contenterror"   # "content rejected" with a media/content code (X.6.Y) names no spam
    if command == "DATA" and reason == "userunknown" and sub not in _DECISIVE and not strong:
        return "filtered"       # the user existed at RCPT; the content was refused
    if reason == "userunknown" and not command and not strong and _unproven_unknown(low, sub):
        return "filtered"
    if command in ("CONN", "HELO") and reason in ("userunknown", "hostunknown", "notaccept", "filtered",
                                                  "rejected", "syntaxerror", "onhold", "undefined"):
        return "blocked"        # refused before any envelope: about the sending host, not the recipient
    if command == "MAIL" and (reason in ("userunknown", "hostunknown", "undefined", "notaccept", "onhold")
                              or (reason == "securityerror" and not worded)
                              or (reason == "blocked" and not _NAMES_CLIENT.search(low))):
        return "rejected"       # a refused envelope sender says nothing about the recipient
    return reason


def _unproven_unknown(low: str, sub: str) -> bool:
    """A remote server's "user unknown" reply that does not prove the mailbox is gone: neither the command
    it answered (RCPT) nor an address-class status (X.1.Y) is known, and the status is generic or a security
    refusal. Content filters and per-user rules answer so at DATA too; reporting MTAs name the command for a
    RCPT refusal. Soft (``filtered``, the convention of Sisimai's vocabulary). The recipient's own server
    saying it without an SMTP reply (a local directory lookup: Exchange, Domino, IMail) stays userunknown."""
    if not sub:
        m = _ANY_STATUS.search(low[:300])
        sub = f"{m.group(1)}.{m.group(2)}" if m else ""
    if sub and sub not in _UNPROVING_SUBS and not sub.startswith("7."):
        return False
    return bool(_REMOTE_REPLY.search(low[:300]))


# the wordings of a failed lookup in the reporting server's own user directory: it names the directory
# (Domino Directory, Name & Address Book, ディレクトリ), finds no mailbox by that name (Exchange's "name is
# not recognized", qmail-local's "no mailbox here by that name"), labels
# the looked-up address ("Unknown user: a@b", "Invalid final delivery userid: a@b", IMail) or says that no
# recipient of the message is valid
_DIRECTORY = re.compile(r"not listed in|ディレクトリ|name is not recognized|by that name|"
                        r"(?:unknown user|userid)\s*:\s*\S+@|no valid recipients")
# "550: <a@b>: User unknown": the code, then the address it refused echoed (the argument of RCPT TO)
_ECHOED_RCPT = re.compile(r"(?<![\d.])[45]\d\d:\s*<[^<>\s@]+@[^<>\s]+>")


def codeless_unknown_unproven(diagnostic: str, context: str) -> bool:
    """A notice's "user unknown" that carries no evidence at all: no SMTP reply (``550 ...``), no status
    code anywhere, no command, no echo of the refused address, and not the wording of a failed lookup in
    the server's own directory. Generic words ("[User unknown]", "Recipient Not Found", "This user doesn't
    have a X account") are what content filters and per-user rules say too: ``filtered`` (soft), the
    convention of Sisimai's vocabulary for a "user unknown" without status or RCPT."""
    low = (diagnostic or "").lower()[:4000]
    if (_REMOTE_REPLY.search(low[:300]) or _ANY_STATUS.search(low) or _DIRECTORY.search(low)
            or _ECHOED_RCPT.search(low[:300])):
        return False
    return not (smtp_command(diagnostic) or smtp_command(context))


# "Delivery to the following recipients failed permanently:", "The following address(es) failed:" (and the
# addresses the notice lists after it)
_LEAD_IN = re.compile(r"(?:delivery to )?the following (?:recipients?|address(?:es|\(es\))?)[^:\n]{0,40}:|"
                      r"<?[^\s<>@]+@[\w.-]+>?", re.I)
_SPAM_NAMED = re.compile(r"spam|\bube\b|\bjunk\b|\bbulk\b|uribl|surbl|blacklisted|phish")
_WORDS = re.compile(r"[^\W\d_]{2,}")


def _unexplained(diagnostic: str, action: str, command: str) -> str:
    """No phrase and no code explains the failure."""
    if action == "delayed":
        return "expired"        # still queued: the only fact is the delay
    if command in ("CONN", "HELO"):
        return "blocked"        # refused before any envelope: the sending host was refused
    # a text that explains nothing we know: "onhold" (held for a human to read), "undefined" when the
    # report gave no text at all (the vocabulary's distinction): a notice's lead-in sentence and the
    # address itself are no text about the failure
    return "onhold" if _WORDS.search(_LEAD_IN.sub(" ", diagnostic)) else "undefined"


def kind(reason: str, status: str, replycode: str = "") -> str:
    if reason in HARD_REASONS:
        if (status[:1] == "4") or (not status and replycode[:1] == "4"):
            return "soft"
        return "hard"
    return "soft"


def pseudo_status(reason: str, temporary: bool) -> str:
    code = _PSEUDO.get(reason)
    if code is None:
        return ""
    return f"{'4' if temporary else '5'}.0.{code}"
