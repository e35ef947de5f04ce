-- POST /calls as the site's script sends it when a visitor taps a tel: link on an ad's landing (bench/run.py).
wrk.method = "POST"
wrk.body = "page=%2F&query=utm_source%3Dbench%26utm_medium%3Dcpc&referrer="
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded;charset=UTF-8"
wrk.headers["Sec-Fetch-Site"] = "same-origin"
