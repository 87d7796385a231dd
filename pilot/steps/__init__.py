"""What a plan is: plan and step models, cron schedules, ``{{ JMESPath }}`` templating and its bounds."""
