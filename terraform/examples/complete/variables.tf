variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Pipeline name."
  type        = string
  default     = "orders"
}

variable "vpc_id" {
  description = "VPC with private subnets that reach PostgreSQL and (through NAT or endpoints) S3, SNS and Secrets Manager."
  type        = string
}

variable "private_subnet_ids" {
  description = "Two or more private subnets in different availability zones."
  type        = list(string)
}

variable "database_cidr_blocks" {
  description = "CIDR blocks of the PostgreSQL server."
  type        = list(string)
}

variable "database_url" {
  description = "postgres://godwit:PASSWORD@HOST:5432/DB?sslmode=verify-full&sslrootcert=system"
  type        = string
  sensitive   = true
}

variable "image" {
  description = "The godwit image pushed to ECR, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/godwit:0.1.0."
  type        = string
}

variable "ecr_repository_arn" {
  description = "ARN of the ECR repository of the image."
  type        = string
  default     = null
}

variable "alert_email" {
  description = "Who gets godwit's events and the alarms."
  type        = string
  default     = null
}

variable "lambda_zip_path" {
  description = "target/lambda/godwit/bootstrap.zip from cargo lambda build --release --features lambda --output-format zip; null: no Lambda function."
  type        = string
  default     = null
}

variable "shape" {
  description = "How godwit runs: batch (a scheduled ECS task, run --once) or service (the CDC service with its health check)."
  type        = string
  default     = "batch"

  validation {
    condition     = contains(["batch", "service"], var.shape)
    error_message = "shape must be batch or service."
  }
}
