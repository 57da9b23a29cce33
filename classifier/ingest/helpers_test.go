package ingest_test

import (
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }

func statusCode(err error) string { return status.Code(err).String() }
