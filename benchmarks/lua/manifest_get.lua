-- wrk script: GET one manifest (the URL's path) with the Accept header registry
-- clients send, and print a JSON summary line the runner parses.
-- Usage: wrk -t1 -c64 -d10s -s manifest_get.lua http://127.0.0.1:PORT/v2/REPO/manifests/REF

wrk.method = "GET"
wrk.headers["Accept"] = table.concat({
   "application/vnd.oci.image.manifest.v1+json",
   "application/vnd.oci.image.index.v1+json",
   "application/vnd.docker.distribution.manifest.v2+json",
   "application/vnd.docker.distribution.manifest.list.v2+json",
}, ", ")
-- An Authorization header ("Basic ...", "Bearer ...") from the environment, if set
-- (the auth workload; kept off the command line).
local authorization = os.getenv("WRK_AUTHORIZATION")
if authorization and authorization ~= "" then
   wrk.headers["Authorization"] = authorization
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
      '"latency_mean_us":%.1f,"latency_p50_us":%d,"latency_p90_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
