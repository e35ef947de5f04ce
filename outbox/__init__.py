"""Every message the site sends, through the outbox table.

`rows` builds the rows (the clinic's email, the confirmation, the reminder, alerts, webhook events);
`sender` is the loop that claims a due row, has its channel deliver it and records the attempt;
`email`, `alerts` and `webhooks` are the channels; `addresses` names the alert and webhook addresses;
`reminders` queues a reminder for a request left waiting.
"""
