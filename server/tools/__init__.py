"""Tools that drive the server, apart from serving: `orthoserve bench`, `bench-http`,
`bench-many-sets` and `soak`, and the offline engine they and the exactness tests share."""
