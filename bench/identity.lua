wrk.method = "POST"
wrk.body = '{"inputs":[{"name":"x","shape":[1,16],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}]}'
wrk.headers["Content-Type"] = "application/json"
